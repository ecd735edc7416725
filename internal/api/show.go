package api

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// View is a job with the state eng sees it in.
func View(eng *engine.Engine, j *job.Job) Job {
	return Job{Job: j, State: eng.EffectiveState(j)}
}

// BuildShow reads a job's detail: its steps in script order, its
// children counted by state, and its failed children.
func BuildShow(ctx context.Context, eng *engine.Engine, j *job.Job) (*Show, error) {
	st := eng.Store()
	steps, err := st.Journal(ctx, j.ID)
	if err != nil {
		return nil, err
	}
	if steps == nil {
		steps = []job.Step{}
	}
	// A script job's blocks have names, not positions: they show in the
	// order the script first reached them, as journaled.
	if sc, err := eng.ScriptOf(ctx, j); err != nil {
		return nil, err
	} else if sc == nil {
		SortSteps(steps)
	}
	children, err := st.CountChildren(ctx, j.ID, time.Now())
	if err != nil {
		return nil, err
	}
	v := &Show{Job: View(eng, j), Steps: steps, Children: children}
	if children[job.Failed] > 0 {
		failed, err := st.Jobs(ctx, job.Filter{ParentID: j.ID, States: []job.State{job.Failed}}, time.Now())
		if err != nil {
			return nil, err
		}
		for _, c := range failed {
			v.Failed = append(v.Failed, FailedChild{ID: c.ID, Host: c.Target, Error: c.Error})
		}
	}
	return v, nil
}

// SortSteps orders keys as the script ran them: 2 < 10, 4/b2/1 < 4/b10/1.
func SortSteps(steps []job.Step) {
	sort.Slice(steps, func(i, k int) bool { return keyLess(steps[i].Key, steps[k].Key) })
}

func keyLess(a, b string) bool {
	pa, pb := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		na, ea := strconv.Atoi(strings.TrimPrefix(pa[i], "b"))
		nb, eb := strconv.Atoi(strings.TrimPrefix(pb[i], "b"))
		if ea == nil && eb == nil {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

// StateQuery is what a listing asks the store for states: a running job
// whose process died reads interrupted before its lease expires, so
// asking for interrupted jobs asks for running ones too, and the
// listing keeps those whose effective state matches.
func StateQuery(states []job.State) []job.State {
	for _, s := range states {
		if s == job.Interrupted {
			for _, r := range states {
				if r == job.Running {
					return states
				}
			}
			return append(append([]job.State{}, states...), job.Running)
		}
	}
	return states
}
