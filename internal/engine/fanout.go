package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/drover/drover/internal/job"
)

// Fanout is a parent job's spec: the hosts it runs the workflow on, one
// child job each, and how the children roll.
type Fanout struct {
	Hosts    []Host `json:"hosts"`
	All      []Host `json:"all,omitempty"` // the whole inventory, for on= lookups
	Throttle int    `json:"throttle,omitempty"`
	Batch    string `json:"batch,omitempty"`
	MaxFail  string `json:"max_fail,omitempty"`
}

// ParseCount reads N or N% of total; "" is 0.
func ParseCount(s string, total int) (int, error) {
	if s == "" {
		return 0, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f > 100 {
			return 0, fmt.Errorf("%q: want a percentage from 1%% to 100%%", s)
		}
		return max(1, int(math.Ceil(f*float64(total)/100))), nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q: want a positive number or a percentage", s)
	}
	return n, nil
}

// PrepareFanout validates a parent job and makes its children: one per
// host, with the parent's input, the host as target and its inventory
// variables as vars. Child ids are the parent's id and the host's index,
// so they read and sort together.
func (e *Engine) PrepareFanout(ctx context.Context, s Spec, f Fanout) (*Prepared, []*job.Job, error) {
	if len(f.Hosts) == 0 {
		return nil, nil, UsageError(errors.New("no hosts to run on (check --targets, or --inventory and --limit)"))
	}
	if f.Throttle < 0 {
		return nil, nil, UsageError(errors.New("--throttle must be 0 (no limit) or more"))
	}
	if _, err := ParseCount(f.Batch, len(f.Hosts)); err != nil {
		return nil, nil, UsageError(fmt.Errorf("--batch %w", err))
	}
	if _, err := ParseCount(f.MaxFail, len(f.Hosts)); err != nil {
		return nil, nil, UsageError(fmt.Errorf("--max-fail %w", err))
	}
	seen := map[string]bool{}
	for _, h := range f.Hosts {
		if seen[h.Name] {
			return nil, nil, UsageError(fmt.Errorf("host %s is listed twice", h.Name))
		}
		seen[h.Name] = true
	}
	spec, err := json.Marshal(f)
	if err != nil {
		return nil, nil, err
	}
	s.Spec = spec
	p, err := e.Prepare(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	width := len(strconv.Itoa(len(f.Hosts)))
	children := make([]*job.Job, len(f.Hosts))
	for i, h := range f.Hosts {
		c := *p.Job
		c.ID = fmt.Sprintf("%s.%0*d", p.Job.ID, width, i+1)
		c.ParentID = p.Job.ID
		c.Target = h.Name
		c.Vars = h.Vars
		c.Spec = nil
		c.Name = p.Job.Name + "@" + h.Name
		children[i] = &c
	}
	return p, children, nil
}

// CreateFanout stores a parent job, held by this engine, and its queued
// children, in one transaction.
func (e *Engine) CreateFanout(ctx context.Context, p *Prepared, children []*job.Job) error {
	now := e.now()
	parent := p.Job
	parent.State = job.Running
	parent.Owner = e.owner
	parent.LeaseUntil = now.Add(e.lease)
	parent.Started = now
	parent.Runs = 1
	return e.store.CreateJobs(ctx, p.Source, append([]*job.Job{parent}, children...)...)
}

// fanoutOf reads (and caches) a parent job's spec.
func (e *Engine) fanoutOf(ctx context.Context, parentID string) (*Fanout, error) {
	if v, ok := e.fanouts.Load(parentID); ok {
		return v.(*Fanout), nil
	}
	p, err := e.store.Job(ctx, parentID)
	if err != nil {
		return nil, fmt.Errorf("parent job %s: %w", parentID, err)
	}
	var f Fanout
	if err := json.Unmarshal(p.Spec, &f); err != nil {
		return nil, fmt.Errorf("parent job %s: its fan-out spec: %w", parentID, err)
	}
	e.fanouts.Store(parentID, &f)
	return &f, nil
}

// hostFor resolves a host name for a job: a fanned-out job knows its
// inventory's hosts (address, port, user, vars); any other name is an SSH
// destination as written, resolved by the SSH configuration.
func (e *Engine) hostFor(ctx context.Context, j *job.Job, name string) (Host, error) {
	if j.ParentID != "" {
		f, err := e.fanoutOf(ctx, j.ParentID)
		if err != nil {
			return Host{}, err
		}
		for _, list := range [][]Host{f.Hosts, f.All} {
			for _, h := range list {
				if h.Name == name {
					return h, nil
				}
			}
		}
	}
	return Host{Name: name}, nil
}

// parentRun is a parent job held by this engine while it drives its
// children; operators' requests reach the children through it.
type parentRun struct {
	mu       sync.Mutex
	e        *Engine
	children map[string]bool // running now
	action   job.Action
	reason   string
}

func (p *parentRun) request(a job.Action, reason string) {
	p.mu.Lock()
	if p.action != job.ActionStop {
		p.action, p.reason = a, reason
	}
	ids := make([]string, 0, len(p.children))
	for id := range p.children {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		_, _ = p.e.Request(context.Background(), id, a, reason)
	}
}

func (p *parentRun) halted() job.Action {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.action
}

// ChildFilter selects which children a parent's drive (re)runs.
type ChildFilter struct {
	Hosts []string // only these targets; empty: all
}

// rerunnable are the children a resumed parent runs again.
var rerunnable = []job.State{job.Queued, job.Failed, job.Interrupted, job.Stopped, job.Skipped, job.Suspended, job.Waiting}

// DriveParent runs a claimed parent job's children under its throttle,
// batches and failure limit, and sets the parent's state from theirs:
// completed when every child completed; failed when any failed or was
// skipped; otherwise suspended, waiting or stopped as its children are.
func (e *Engine) DriveParent(ctx context.Context, parent *job.Job, filter ChildFilter, obs Observer, detach <-chan struct{}) (*job.Job, error) {
	if obs == nil {
		obs = nopObserver{}
	}
	f, err := e.fanoutOf(ctx, parent.ID)
	if err != nil {
		return nil, err
	}
	children, err := e.store.Jobs(ctx, job.Filter{ParentID: parent.ID}, e.now())
	if err != nil {
		return nil, err
	}
	sort.Slice(children, func(i, k int) bool { return children[i].ID < children[k].ID })
	want := map[string]bool{}
	for _, h := range filter.Hosts {
		want[h] = true
	}
	var todo []*job.Job
	done := 0
	for _, c := range children {
		st := e.EffectiveState(c)
		if (len(want) == 0 || want[c.Target]) && containsState(rerunnable, st) {
			todo = append(todo, c)
			continue
		}
		done++
	}
	if len(want) > 0 {
		for h := range want {
			found := false
			for _, c := range children {
				found = found || c.Target == h
			}
			if !found {
				return nil, UsageError(fmt.Errorf("--hosts: %s is not a host of job %s", h, parent.ID))
			}
		}
	}
	total := len(children)
	maxFail, _ := ParseCount(f.MaxFail, total)
	batch, _ := ParseCount(f.Batch, total)
	window := f.Throttle
	if batch > 0 {
		window = batch
	}
	if window <= 0 || window > len(todo) {
		window = max(len(todo), 1)
	}

	pr := &parentRun{e: e, children: map[string]bool{}}
	e.holdHandle(parent.ID, pr)
	defer e.release(parent.ID)

	var mu sync.Mutex
	failed := 0
	report := func() {
		mu.Lock()
		p := job.Progress{Done: float64(done), Total: float64(total), Message: "hosts"}
		if failed > 0 {
			p.Message = fmt.Sprintf("hosts, %d failed", failed)
		}
		mu.Unlock()
		obs.Progress(parent.ID, p)
		_ = e.store.Apply(context.WithoutCancel(ctx), &job.Update{JobID: parent.ID, Owner: parent.Owner, Progress: &p})
	}
	report()
	runChild := func(c *job.Job) {
		cj, err := e.Claim(ctx, c.ID, Resumable)
		if err == nil {
			pr.mu.Lock()
			pr.children[c.ID] = true
			pr.mu.Unlock()
			if a := pr.halted(); a != job.ActionNone {
				_, _ = e.Request(ctx, c.ID, a, pr.reason)
			}
			cj, err = e.Drive(ctx, cj, obs, detach)
			pr.mu.Lock()
			delete(pr.children, c.ID)
			pr.mu.Unlock()
		}
		mu.Lock()
		done++
		if err != nil || cj.State == job.Failed {
			failed++
		}
		mu.Unlock()
		if err != nil {
			e.log.Error("running a child job", "job", c.ID, "err", err)
		}
		report()
	}
	skip := func(c *job.Job, why string) {
		if _, err := e.store.SetState(context.WithoutCancel(ctx), c.ID, rerunnable, job.Skipped, e.now()); err != nil {
			e.log.Warn("skipping a child job", "job", c.ID, "err", err)
		}
		_ = why
		mu.Lock()
		done++
		mu.Unlock()
	}
	stopStarting := func() bool {
		if pr.halted() != job.ActionNone || ctx.Err() != nil {
			return true
		}
		select {
		case <-detach:
			return true
		default:
		}
		return false
	}
	tooManyFailed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return maxFail > 0 && failed >= maxFail
	}

	if batch > 0 {
		for start := 0; start < len(todo); start += batch {
			end := min(start+batch, len(todo))
			var wg sync.WaitGroup
			for _, c := range todo[start:end] {
				if tooManyFailed() {
					skip(c, "max-fail")
					continue
				}
				if stopStarting() {
					continue
				}
				wg.Add(1)
				go func(c *job.Job) { defer wg.Done(); runChild(c) }(c)
			}
			wg.Wait()
		}
	} else {
		sem := make(chan struct{}, window)
		var wg sync.WaitGroup
		for _, c := range todo {
			sem <- struct{}{}
			if tooManyFailed() {
				<-sem
				skip(c, "max-fail")
				continue
			}
			if stopStarting() {
				<-sem
				continue
			}
			wg.Add(1)
			go func(c *job.Job) { defer wg.Done(); defer func() { <-sem }(); runChild(c) }(c)
		}
		wg.Wait()
	}
	report()
	return e.settleParent(context.WithoutCancel(ctx), parent, pr)
}

// settleParent derives the parent's state from its children's.
func (e *Engine) settleParent(ctx context.Context, parent *job.Job, pr *parentRun) (*job.Job, error) {
	children, err := e.store.Jobs(ctx, job.Filter{ParentID: parent.ID}, e.now())
	if err != nil {
		return nil, err
	}
	counts := map[job.State]int{}
	var failedHosts []string
	for _, c := range children {
		st := e.EffectiveState(c)
		counts[st]++
		if st == job.Failed {
			failedHosts = append(failedHosts, c.Target)
		}
	}
	now := e.now()
	u := &job.Update{JobID: parent.ID, Owner: parent.Owner, Release: true, ClearRequest: true}
	var st job.State
	msg := ""
	switch {
	case counts[job.Failed] > 0 || counts[job.Skipped] > 0:
		st = job.Failed
		msg = fmt.Sprintf("%d of %d hosts failed", counts[job.Failed], len(children))
		if len(failedHosts) > 0 {
			shown := failedHosts
			if len(shown) > 10 {
				shown = shown[:10]
			}
			msg += ": " + strings.Join(shown, ", ")
			if len(failedHosts) > len(shown) {
				msg += fmt.Sprintf(" and %d more", len(failedHosts)-len(shown))
			}
		}
		if n := counts[job.Skipped]; n > 0 {
			msg += fmt.Sprintf("; %d skipped under --max-fail", n)
		}
		msg += fmt.Sprintf(" (drover show %s; drover resume %s runs them again)", parent.ID, parent.ID)
	case counts[job.Stopped] > 0 && pr.halted() == job.ActionStop:
		st = job.Stopped
	case counts[job.Suspended] > 0 || counts[job.Queued] > 0 || counts[job.Interrupted] > 0 || counts[job.Stopped] > 0:
		st = job.Suspended
		msg = fmt.Sprintf("%d of %d hosts completed", counts[job.Completed], len(children))
		u.Reason = &msg
		msg = ""
	case counts[job.Waiting] > 0:
		st = job.Waiting
		r := fmt.Sprintf("%d hosts waiting", counts[job.Waiting])
		u.Reason = &r
	default:
		st = job.Completed
	}
	u.State = &st
	u.Error = &msg
	if st.Ended() {
		u.Ended = &now
	}
	if err := e.store.Apply(ctx, u); err != nil {
		return nil, err
	}
	return e.store.Job(ctx, parent.ID)
}

func containsState(states []job.State, s job.State) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}
