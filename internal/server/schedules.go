package server

import (
	"errors"
	"net/http"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/auth"
	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

// listSchedules is GET /schedules. Every user sees every schedule, as
// every user sees the registered workflows they fire.
func (s *Server) listSchedules(w http.ResponseWriter, r *http.Request, u user) *httpError {
	scs, err := s.st.Schedules(r.Context())
	if err != nil {
		return fromErr(err)
	}
	if scs == nil {
		scs = []*job.Schedule{}
	}
	writeJSON(w, http.StatusOK, api.ScheduleList{Schedules: scs})
	return nil
}

func (s *Server) getSchedule(w http.ResponseWriter, r *http.Request, u user) *httpError {
	sc, err := s.st.Schedule(r.Context(), r.PathValue("name"))
	if err != nil {
		return fromErr(err)
	}
	writeJSON(w, http.StatusOK, sc)
	return nil
}

// addSchedule is POST /schedules: validated as drover run validates a
// job of the workflow, stored, fired by whichever server leads.
func (s *Server) addSchedule(w http.ResponseWriter, r *http.Request, u user) *httpError {
	var body api.AddSchedule
	if he := decode(w, r, &body, s.o.MaxBody, false); he != nil {
		return he
	}
	sc, err := s.eng.NewSchedule(r.Context(), engine.ScheduleSpec{
		Name: body.Name, Cron: body.Cron, Timezone: body.Timezone, Workflow: body.Workflow, Params: body.Params, CreatedBy: u.name,
	})
	if err != nil {
		return fromErr(err)
	}
	if err := s.st.AddSchedule(r.Context(), sc); err != nil {
		if errors.Is(err, job.ErrExists) {
			return conflict("schedule %s exists; remove it first (drover schedule rm %s)", sc.Name, sc.Name)
		}
		return fromErr(err)
	}
	s.log.Info("schedule added", "schedule", sc.Name, "cron", sc.Cron, "workflow", sc.Workflow, "next_fire", sc.NextFire, "user", u.name)
	w.Header().Set("Location", api.Prefix+"/schedules/"+sc.Name)
	writeJSON(w, http.StatusCreated, sc)
	return nil
}

// removeSchedule is DELETE /schedules/{name}: admins remove any schedule,
// operators the ones they added.
func (s *Server) removeSchedule(w http.ResponseWriter, r *http.Request, u user) *httpError {
	ctx := r.Context()
	name := r.PathValue("name")
	sc, err := s.st.Schedule(ctx, name)
	if err != nil {
		return fromErr(err)
	}
	if u.role != auth.Admin && sc.CreatedBy != u.name {
		return forbidden("%s is a %s and may not remove schedule %s, which %s added", u.name, u.role, name, orNobody(sc.CreatedBy))
	}
	if err := s.st.DeleteSchedule(ctx, name); err != nil {
		return fromErr(err)
	}
	s.log.Info("schedule removed", "schedule", name, "user", u.name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func orNobody(name string) string {
	if name == "" {
		return "the command line"
	}
	return name
}
