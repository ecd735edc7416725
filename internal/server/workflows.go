package server

import (
	"net/http"
	"sort"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

func (s *Server) listWorkflows(w http.ResponseWriter, r *http.Request, u user) *httpError {
	wfs, err := s.st.Workflows(r.Context())
	if err != nil {
		return fromErr(err)
	}
	if wfs == nil {
		wfs = []*job.Workflow{}
	}
	sort.Slice(wfs, func(i, k int) bool { return wfs[i].Name < wfs[k].Name })
	writeJSON(w, http.StatusOK, api.WorkflowList{Workflows: wfs})
	return nil
}

// addWorkflow is POST /workflows: the source is compiled and checked,
// then registered as the name's next version.
func (s *Server) addWorkflow(w http.ResponseWriter, r *http.Request, u user) *httpError {
	var body api.AddWorkflow
	if he := decode(w, r, &body, s.o.MaxBody, false); he != nil {
		return he
	}
	if body.Name == "" || body.Source == nil {
		return badRequest("a workflow needs a name and a source")
	}
	src, err := api.CheckSource(body.Source)
	if err != nil {
		return badRequest("%v", err)
	}
	if _, err := s.eng.Signature(src); err != nil {
		return fromErr(engine.UsageError(err))
	}
	wf, err := s.st.PutWorkflow(r.Context(), body.Name, src, time.Now())
	if err != nil {
		return fromErr(err)
	}
	s.log.Info("workflow registered", "workflow", wf.Name, "version", wf.Version, "user", u.name)
	w.Header().Set("Location", api.Prefix+"/workflows/"+wf.Name)
	writeJSON(w, http.StatusCreated, wf)
	return nil
}

func (s *Server) getWorkflow(w http.ResponseWriter, r *http.Request, u user) *httpError {
	ctx := r.Context()
	wf, err := s.st.Workflow(ctx, r.PathValue("name"))
	if err != nil {
		return fromErr(err)
	}
	src, err := s.st.Source(ctx, wf.Digest)
	if err != nil {
		return fromErr(err)
	}
	sig, err := s.eng.Signature(src)
	if err != nil {
		return fromErr(err)
	}
	writeJSON(w, http.StatusOK, api.Workflow{Workflow: wf, Signature: sig.String(), Files: src.Files})
	return nil
}

func (s *Server) removeWorkflow(w http.ResponseWriter, r *http.Request, u user) *httpError {
	name := r.PathValue("name")
	if err := s.st.DeleteWorkflow(r.Context(), name); err != nil {
		return fromErr(err)
	}
	s.log.Info("workflow removed", "workflow", name, "user", u.name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}
