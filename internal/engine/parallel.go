package engine

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"go.starlark.net/starlark"
)

// branchError is a branch's failure as its caller sees it; the branch's
// own Starlark stack is inside.
type branchError struct {
	label string
	err   error
}

func (e *branchError) Error() string { return e.label + ": " + e.err.Error() }
func (e *branchError) Unwrap() error { return e.err }

func builtinParallel(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	failFast := true
	for _, kv := range kw {
		if k, _ := starlark.AsString(kv[0]); k == "fail_fast" {
			failFast = bool(kv[1].Truth())
			continue
		}
		return nil, fmt.Errorf("parallel: unexpected keyword argument %s", kv[0])
	}
	calls := make([]branchCall, len(args))
	for i, fn := range args {
		if _, ok := fn.(starlark.Callable); !ok {
			return nil, fmt.Errorf("parallel: argument %d is a %s, not a function", i+1, fn.Type())
		}
		calls[i] = branchCall{fn: fn}
	}
	return r.parallel(t, "parallel", calls, 0, failFast)
}

func builtinForeach(r *run, t *starlark.Thread, b *starlark.Builtin, args starlark.Tuple, kw []starlark.Tuple) (starlark.Value, error) {
	var items starlark.Iterable
	var fn starlark.Callable
	throttle := 0
	failFast := true
	if err := starlark.UnpackArgs(b.Name(), args, kw, "items", &items, "fn", &fn, "throttle?", &throttle, "fail_fast?", &failFast); err != nil {
		return nil, err
	}
	if throttle < 0 {
		return nil, fmt.Errorf("foreach_parallel: throttle must be 0 (no limit) or more")
	}
	var calls []branchCall
	it := items.Iterate()
	defer it.Done()
	var x starlark.Value
	for it.Next(&x) {
		calls = append(calls, branchCall{fn: fn, args: starlark.Tuple{x}})
	}
	return r.parallel(t, "foreach_parallel", calls, throttle, failFast)
}

type branchCall struct {
	fn   starlark.Value
	args starlark.Tuple
}

// parallel runs each call as a branch on its own thread. The construct
// takes one position in the caller's thread; branch i's steps are keyed
// under it as P/bi/N. Branches see the caller's values frozen, so they
// return results instead of mutating shared state.
func (r *run) parallel(t *starlark.Thread, what string, calls []branchCall, throttle int, failFast bool) (starlark.Value, error) {
	f := frameOf(t)
	key := f.nextKey()
	for _, c := range calls {
		c.fn.Freeze()
		c.args.Freeze()
	}
	parent := ctxOf(t, r)
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)

	results := make([]starlark.Value, len(calls))
	errs := make([]error, len(calls))
	limit := throttle
	if limit <= 0 || limit > len(calls) {
		limit = len(calls)
	}
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	var failOnce sync.Once
	var firstFail error
	for i := range calls {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			// A sibling failed fast: branches not started yet never start.
			break
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			label := "b" + strconv.Itoa(i+1)
			bt := r.newThread(t.Name+"/"+label, key+"/"+label+"/")
			bt.SetLocal(ctxKey, ctx)
			stop := context.AfterFunc(ctx, func() { bt.Cancel("a sibling branch failed") })
			defer stop()
			v, err := starlark.Call(bt, calls[i].fn, calls[i].args, nil)
			if err != nil {
				var h *errHalt
				if !errors.As(err, &h) {
					err = &branchError{label: fmt.Sprintf("branch %d of %s at step %s", i+1, what, key), err: err}
					if failFast {
						failOnce.Do(func() {
							firstFail = err
							cancel(err)
						})
					}
				}
				errs[i] = err
				return
			}
			results[i] = v
		}(i)
	}
	wg.Wait()

	if firstFail != nil {
		return nil, firstFail
	}
	var failed []error
	var halt error
	for i, err := range errs {
		if err == nil {
			if results[i] == nil && parent.Err() == nil {
				results[i] = starlark.None
			}
			continue
		}
		var h *errHalt
		if errors.As(err, &h) {
			if halt == nil {
				halt = err
			}
			continue
		}
		failed = append(failed, err)
	}
	if len(failed) == 1 {
		return nil, failed[0]
	}
	if len(failed) > 1 {
		return nil, &multiBranchError{n: len(failed), of: len(calls), first: failed[0]}
	}
	if halt != nil {
		return nil, halt
	}
	if err := parent.Err(); err != nil {
		return nil, context.Cause(parent)
	}
	for i := range results {
		if results[i] == nil {
			results[i] = starlark.None
		}
	}
	return starlark.NewList(results), nil
}

type multiBranchError struct {
	n, of int
	first error
}

func (e *multiBranchError) Error() string {
	return fmt.Sprintf("%d of %d branches failed; the first: %v", e.n, e.of, e.first)
}
func (e *multiBranchError) Unwrap() error { return e.first }

// Summary is what the error says besides its first branch's failure.
func (e *multiBranchError) Summary() string {
	return fmt.Sprintf("%d of %d branches failed", e.n, e.of)
}
