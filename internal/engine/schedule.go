package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	// Schedules name IANA time zones; the binary carries the database so
	// that a server without /usr/share/zoneinfo reads them alike.
	_ "time/tzdata"

	"github.com/robfig/cron/v3"

	"github.com/drover/drover/internal/job"
)

// SchedulerLease names the lease of the server that fires schedules.
const SchedulerLease = "scheduler"

// ScheduleJobPrefix starts the name of every job a schedule creates:
// "schedule:NAME", so that listings say where a job came from.
const ScheduleJobPrefix = "schedule:"

var scheduleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// cronParser reads the standard five fields and the descriptors (@hourly,
// @every 1m); CRON_TZ= may prefix either.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseCron reads a schedule's expression in its time zone (empty: UTC).
func ParseCron(expr, tz string) (cron.Schedule, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" {
		return nil, errors.New("empty cron expression")
	}
	hasTZ := strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=")
	if hasTZ && !strings.Contains(expr, " ") {
		// The parser would index past the missing space and panic.
		return nil, fmt.Errorf("cron expression %q: a time zone prefix needs an expression after it", expr)
	}
	if hasTZ && tz != "" {
		return nil, fmt.Errorf("cron expression %q names a time zone and --timezone gives another: give one", expr)
	}
	if !hasTZ {
		if tz == "" {
			tz = "UTC"
		}
		expr = "CRON_TZ=" + tz + " " + expr
	}
	sched, err := cronParser.Parse(expr)
	if err != nil {
		return nil, fmt.Errorf("cron expression %q: %w (want 5 fields: minute hour day-of-month month day-of-week, or @hourly, @daily, @every 10m...)", strings.TrimPrefix(expr, "CRON_TZ="+tz+" "), err)
	}
	return sched, nil
}

// ScheduleSpec is a schedule to add.
type ScheduleSpec struct {
	Name      string
	Cron      string
	Timezone  string
	Workflow  string
	Params    []string
	CreatedBy string
}

// NewSchedule validates a schedule and returns it ready to be stored:
// its expression parses and fires some day, its workflow is registered
// and its parameters bind to the workflow's main as drover run would bind
// them. Errors in the request wrap ErrUsage.
func (e *Engine) NewSchedule(ctx context.Context, s ScheduleSpec) (*job.Schedule, error) {
	if !scheduleName.MatchString(s.Name) {
		return nil, UsageError(fmt.Errorf("schedule name %q: want letters, digits, '.', '_' or '-', starting with a letter or digit", s.Name))
	}
	sched, err := ParseCron(s.Cron, s.Timezone)
	if err != nil {
		return nil, UsageError(err)
	}
	now := e.now()
	next := sched.Next(now)
	if next.IsZero() {
		return nil, UsageError(fmt.Errorf("cron expression %q never fires", s.Cron))
	}
	if s.Workflow == "" {
		return nil, UsageError(errors.New("no workflow given"))
	}
	// The job a fire would make, made now: the same checks, the same
	// messages as drover run.
	if _, err := e.Prepare(ctx, Spec{Workflow: s.Workflow, Params: s.Params}); err != nil {
		return nil, fmt.Errorf("schedule %s: %w", s.Name, err)
	}
	params := s.Params
	if params == nil {
		params = []string{}
	}
	return &job.Schedule{
		Name: s.Name, Cron: strings.TrimSpace(s.Cron), Timezone: s.Timezone, Workflow: s.Workflow, Params: params,
		CreatedBy: s.CreatedBy, Created: now, NextFire: next,
	}, nil
}

// SchedulerOptions configure RunScheduler.
type SchedulerOptions struct {
	// Fired is told of every fire this engine commits: j is the job it
	// created, nil when it created none (errMsg says why).
	Fired func(sc *job.Schedule, j *job.Job, errMsg string)
	// Leading is told when this engine takes or loses the lead.
	Leading func(bool)
}

// RunScheduler fires due schedules until ctx ends, while this engine
// holds the scheduler lease. The lease is the engine's job lease: when
// the leader dies another engine takes over once it expires. Every fire
// commits only if the schedule still waits for that time (FireSchedule),
// so that a leader that lost its lease without knowing it (frozen, cut
// off) cannot fire a time twice. On return the lease is given up, so
// that the next leader need not wait for it.
func (e *Engine) RunScheduler(ctx context.Context, o SchedulerOptions) error {
	leading := false
	setLeading := func(v bool) {
		if v != leading {
			leading = v
			if v {
				e.log.Info("leading the scheduler: this server fires the schedules")
			} else {
				e.log.Info("no longer leading the scheduler")
			}
			if o.Leading != nil {
				o.Leading(v)
			}
		}
	}
	defer func() {
		if leading {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := e.store.ReleaseLease(rctx, SchedulerLease, e.owner); err != nil {
				e.log.Warn("giving up the scheduler lease", "err", err)
			}
			setLeading(false)
		}
	}()
	for {
		wait := e.poll
		now := e.now()
		holder, until, err := e.store.Lease(ctx, SchedulerLease, e.owner, now.Add(e.lease), now)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			e.log.Warn("taking the scheduler lease", "err", err)
			// Without a renewal the lead may pass to another server:
			// stop firing until the lease is ours again.
			setLeading(false)
		case holder != e.owner:
			setLeading(false)
		default:
			setLeading(true)
			next, err := e.FireDue(ctx, until, o.Fired)
			if err != nil && ctx.Err() == nil {
				e.log.Warn("firing schedules", "err", err)
			}
			if !next.IsZero() {
				if d := next.Sub(e.now()); d < wait {
					wait = max(d, time.Millisecond)
				}
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// FireDue fires every schedule whose time has come, as long as the lease
// it holds lasts (until), and returns the earliest next fire time (zero
// when there are no schedules).
//
// A schedule that missed several times (no server ran, or the workflow
// took the lead over) fires once, for the first missed time, and then
// goes on from now: the policy of systemd's Persistent= timers and of
// cron jobs that run late, so that an outage does not unleash a burst.
func (e *Engine) FireDue(ctx context.Context, until time.Time, fired func(*job.Schedule, *job.Job, string)) (time.Time, error) {
	scs, err := e.store.Schedules(ctx)
	if err != nil {
		return time.Time{}, err
	}
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	var errs []error
	for _, sc := range scs {
		now := e.now()
		if sc.NextFire.After(now) {
			earliest(sc.NextFire)
			continue
		}
		if !now.Before(until) {
			// The lease ran out meanwhile; the next leader fires the rest.
			earliest(sc.NextFire)
			continue
		}
		f, err := e.fire(ctx, sc, now)
		if err != nil {
			if errors.Is(err, job.ErrFired) || errors.Is(err, job.ErrNotFound) {
				continue // another server fired it, or it was removed
			}
			errs = append(errs, fmt.Errorf("schedule %s: %w", sc.Name, err))
			earliest(now.Add(e.poll))
			continue
		}
		earliest(f.Next)
		if f.Job != nil {
			e.log.Info("schedule fired", "schedule", sc.Name, "at", f.At, "job", f.Job.ID)
			e.Wake()
		} else {
			e.log.Warn("schedule fired without a job", "schedule", sc.Name, "at", f.At, "err", f.Error)
		}
		if fired != nil {
			fired(sc, f.Job, f.Error)
		}
	}
	return next, errors.Join(errs...)
}

// fire commits one fire of sc at now.
func (e *Engine) fire(ctx context.Context, sc *job.Schedule, now time.Time) (*job.Fire, error) {
	f := &job.Fire{Schedule: sc.Name, At: sc.NextFire, Fired: now}
	sched, err := ParseCron(sc.Cron, sc.Timezone)
	if err == nil {
		f.Next = sched.Next(now)
		if f.Next.IsZero() {
			err = errors.New("the cron expression fires no more")
		}
	}
	if err != nil {
		// A schedule stored by another drover version may not parse
		// here: it is retried later rather than skipped.
		f.Next = now.Add(time.Hour)
		f.Error = err.Error()
	} else {
		p, err := e.Prepare(ctx, Spec{Workflow: sc.Workflow, Params: sc.Params, Name: ScheduleJobPrefix + sc.Name})
		if err != nil {
			if !errors.Is(err, ErrUsage) {
				return nil, err // the store failed: try again
			}
			// The workflow was removed, or its new version takes other
			// parameters: this time is skipped, and says why.
			f.Error = err.Error()
		} else {
			p.Job.CreatedBy = sc.CreatedBy
			f.Job, f.Source = p.Job, p.Source
		}
	}
	if err := e.store.FireSchedule(ctx, f); err != nil {
		return nil, err
	}
	if f.Source != nil {
		e.sources.Store(f.Source.Digest, f.Source)
	}
	return f, nil
}
