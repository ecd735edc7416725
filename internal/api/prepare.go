package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/inventory"
	"github.com/drover/drover/internal/job"
)

// Prepare validates a job request and makes the job and, with targets or
// an inventory, its children, ready to be stored. The server and the
// command line's local mode both prepare jobs here, so that a request is
// refused alike in both. Errors in the request wrap engine.ErrUsage and
// name the drover run flag of the field at fault.
func Prepare(ctx context.Context, eng *engine.Engine, r *CreateJob) (*engine.Prepared, []*job.Job, error) {
	usage := func(format string, args ...any) error {
		return engine.UsageError(fmt.Errorf(format, args...))
	}
	if (r.Source == nil) == (r.Workflow == "") {
		return nil, nil, usage("give a workflow's source or a registered workflow's name, not both or neither")
	}
	if r.Endpoint != "" {
		return nil, nil, usage("endpoints are not supported by this drover yet")
	}
	if len(r.Targets) > 0 && r.Inventory != "" {
		return nil, nil, usage("give --targets or --inventory, not both")
	}
	if r.Limit != "" && r.Inventory == "" {
		return nil, nil, usage("--limit selects hosts of an --inventory")
	}
	if r.Input != nil && !json.Valid(r.Input) {
		return nil, nil, usage("--input is not valid JSON")
	}
	timeout, err := ParseTimeout(r.Timeout)
	if err != nil {
		return nil, nil, usage("--timeout: %v", err)
	}
	spec := engine.Spec{
		Workflow: r.Workflow, Path: r.Path, Input: r.Input, Params: r.Params, Name: r.Name,
		Persist: job.Persist(r.Persist), OnError: job.OnError(r.OnError), Timeout: timeout,
	}
	if r.Source != nil {
		src, err := CheckSource(r.Source)
		if err != nil {
			return nil, nil, engine.UsageError(err)
		}
		spec.Source = src
	}
	if len(r.Targets) == 0 && r.Inventory == "" {
		p, err := eng.Prepare(ctx, spec)
		return p, nil, err
	}
	targets, all, err := hosts(r)
	if err != nil {
		return nil, nil, err
	}
	if len(targets) == 0 {
		return nil, nil, usage("no hosts selected (check --targets, or --inventory and --limit)")
	}
	fo := engine.Fanout{Hosts: targets, All: all, Throttle: r.Throttle, Batch: r.Batch, MaxFail: r.MaxFail}
	return eng.PrepareFanout(ctx, spec, fo)
}

// hosts reads the request's targets or inventory (with its limit): the
// hosts to run on, and the whole inventory for on= lookups.
func hosts(r *CreateJob) (targets, all []engine.Host, err error) {
	if len(r.Targets) > 0 {
		for _, t := range r.Targets {
			if t = strings.TrimSpace(t); t != "" {
				targets = append(targets, engine.Host{Name: t})
			}
		}
		return targets, nil, nil
	}
	name := r.InventoryName
	if name == "" {
		name = "inventory"
	}
	inv, err := inventory.Parse(name, []byte(r.Inventory))
	if err != nil {
		return nil, nil, engine.UsageError(fmt.Errorf("--inventory: %w", err))
	}
	selected := inv.Hosts()
	if r.Limit != "" {
		if selected, err = inv.Limit(r.Limit); err != nil {
			return nil, nil, engine.UsageError(fmt.Errorf("--limit: %w", err))
		}
	}
	conv := func(hs []inventory.Host) ([]engine.Host, error) {
		out := make([]engine.Host, len(hs))
		for i, h := range hs {
			vars, err := json.Marshal(h.Vars)
			if err != nil {
				return nil, fmt.Errorf("host %s: its vars: %w", h.Name, err)
			}
			out[i] = engine.Host{Name: h.Name, Addr: h.Addr, Port: h.Port, User: h.User, Vars: vars}
		}
		return out, nil
	}
	if targets, err = conv(selected); err != nil {
		return nil, nil, err
	}
	if all, err = conv(inv.Hosts()); err != nil {
		return nil, nil, err
	}
	if len(all) == len(targets) {
		all = nil
	}
	return targets, all, nil
}

// CheckSource validates a workflow source sent by a client and seals it
// anew: the digest is always computed here, never taken from the client.
func CheckSource(in *job.Source) (*job.Source, error) {
	if in.Entry == "" {
		return nil, errors.New("the workflow source names no entry file")
	}
	if len(in.Files) == 0 {
		return nil, errors.New("the workflow source has no files")
	}
	for name := range in.Files {
		if name == "" || strings.HasPrefix(name, "/") || name == ".." || strings.HasPrefix(name, "../") ||
			strings.Contains(name, "/../") || strings.ContainsRune(name, '\\') || strings.ContainsRune(name, 0) {
			return nil, fmt.Errorf("workflow file name %q: want a relative path inside the workflow's directory", name)
		}
	}
	if _, ok := in.Files[in.Entry]; !ok {
		return nil, fmt.Errorf("the workflow source has no entry file %q", in.Entry)
	}
	src := &job.Source{Entry: in.Entry, Files: in.Files}
	src.Seal()
	return src, nil
}
