package server

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/job"
)

// scheduledJobs lists, as user, the jobs schedule name created.
func (e *env) scheduledJobs(user, name string) []api.Job {
	e.t.Helper()
	var list api.JobList
	e.json(user, "GET", "/api/v1/jobs?limit=5000", nil).decode(e.t, &list)
	var out []api.Job
	for _, j := range list.Jobs {
		if j.Name == "schedule:"+name {
			out = append(out, j)
		}
	}
	return out
}

// TestSchedules: operators add schedules through the API, checked as
// drover run checks a job; a schedule of @every 1s fires, and its jobs run
// to completion; removing it stops the fires.
func TestSchedules(t *testing.T) {
	e := newEnv(t, Options{})
	if r := e.json("root", "POST", "/api/v1/workflows", api.AddWorkflow{Name: "hello", Source: source(quick)}); r.status != http.StatusCreated {
		t.Fatalf("add workflow = %d %s", r.status, r.body)
	}
	add := api.AddSchedule{Name: "tick", Cron: "@every 1s", Workflow: "hello", Params: []string{"x=tock"}}
	for _, c := range []struct {
		user   string
		body   api.AddSchedule
		status int
		want   string
	}{
		{"val", add, 403, "forbidden"},
		{"alice", api.AddSchedule{Name: "bad", Cron: "every second", Workflow: "hello"}, 400, "expected exactly 5 fields"},
		{"alice", api.AddSchedule{Name: "bad", Cron: "@hourly", Workflow: "nope"}, 400, "no workflow named"},
		{"alice", api.AddSchedule{Name: "bad", Cron: "@hourly", Workflow: "hello", Params: []string{"y=1"}}, 400, "y"},
		{"alice", add, 201, ""},
		{"bob", add, 409, "drover schedule rm tick"},
	} {
		r := e.json(c.user, "POST", "/api/v1/schedules", c.body)
		if r.status != c.status || !strings.Contains(string(r.body), c.want) {
			t.Errorf("add %+v as %s = %d %s, want %d with %q", c.body, c.user, r.status, r.body, c.status, c.want)
		}
	}
	var list api.ScheduleList
	e.json("val", "GET", "/api/v1/schedules", nil).decode(t, &list)
	if len(list.Schedules) != 1 || list.Schedules[0].Name != "tick" || list.Schedules[0].CreatedBy != "alice" || list.Schedules[0].NextFire.IsZero() {
		t.Fatalf("schedules = %+v", list.Schedules)
	}
	if r := e.json("val", "GET", "/api/v1/schedules/nope", nil); r.status != 404 {
		t.Errorf("unknown schedule = %d %s", r.status, r.body)
	}

	// It fires about once a second; its jobs run and complete, and they
	// are alice's.
	deadline := time.Now().Add(10 * time.Second)
	for {
		done := 0
		for _, j := range e.scheduledJobs("alice", "tick") {
			if j.State == job.Completed {
				done++
			}
			if j.State == job.Failed {
				t.Fatalf("scheduled job %s failed: %s", j.ID, j.Error)
			}
		}
		if done >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s, %d scheduled jobs completed, want 2", done)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var sc job.Schedule
	e.json("alice", "GET", "/api/v1/schedules/tick", nil).decode(t, &sc)
	if sc.Fires < 2 || sc.LastJob == "" || sc.LastError != "" {
		t.Errorf("schedule after fires = %+v", sc)
	}
	if r := e.call("root", "GET", "/metrics", nil); !strings.Contains(string(r.body), `drover_schedule_fires_total{outcome="job",schedule="tick"}`) ||
		!strings.Contains(string(r.body), "drover_scheduler_leader 1") {
		t.Errorf("metrics lack the schedule's fires or the leader gauge")
	}

	if r := e.json("bob", "DELETE", "/api/v1/schedules/tick", nil); r.status != 403 {
		t.Errorf("bob removes alice's schedule = %d %s", r.status, r.body)
	}
	if r := e.json("alice", "DELETE", "/api/v1/schedules/tick", nil); r.status != 204 {
		t.Fatalf("alice removes her schedule = %d %s", r.status, r.body)
	}
	n := len(e.scheduledJobs("root", "tick"))
	time.Sleep(1500 * time.Millisecond)
	if m := len(e.scheduledJobs("root", "tick")); m != n {
		t.Errorf("%d jobs fired after the schedule was removed", m-n)
	}
	if r := e.json("alice", "DELETE", "/api/v1/schedules/tick", nil); r.status != 404 {
		t.Errorf("remove again = %d %s", r.status, r.body)
	}
}
