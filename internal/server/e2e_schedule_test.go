package server_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestE2ESchedules: drover schedule in client mode adds, lists and
// removes schedules through the server, which fires them; the jobs name
// their schedule and run to completion.
func TestE2ESchedules(t *testing.T) {
	w := newWorld(t)
	w.makeTokens()
	w.write("hello.star", "def main(who):\n    print(\"hello\", who)\n")
	w.must("", "workflow", "add", "hello", "hello.star")
	w.serve()

	w.must("alice", "schedule", "add", "tick", "--cron", "@every 1s", "hello", "-p", "who=e2e")
	if r := w.exits(2, "alice", "schedule", "add", "bad", "--cron", "61 * * * *", "hello", "-p", "who=x"); !strings.Contains(r.stderr, "61") {
		t.Errorf("bad cron through the server: %s", r)
	}
	if r := w.exits(2, "alice", "schedule", "add", "bad", "--cron", "@hourly", "hello"); !strings.Contains(r.stderr, "missing parameter who") {
		t.Errorf("missing parameter through the server: %s", r)
	}
	if r := w.exits(1, "val", "schedule", "add", "v", "--cron", "@hourly", "hello", "-p", "who=x"); !strings.Contains(r.stderr, "viewer") {
		t.Errorf("a viewer adds a schedule: %s", r)
	}
	var scs []struct {
		Name      string   `json:"name"`
		Params    []string `json:"params"`
		CreatedBy string   `json:"created_by"`
		LastJob   string   `json:"last_job"`
	}
	r := w.must("val", "schedule", "list", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &scs); err != nil || len(scs) != 1 || scs[0].Name != "tick" || scs[0].CreatedBy != "alice" ||
		len(scs[0].Params) != 1 || scs[0].Params[0] != "who=e2e" {
		t.Fatalf("schedule list --json = %v, %s", err, r.stdout)
	}

	// A fired job completes; drover jobs and show say where it came from.
	deadline := time.Now().Add(15 * time.Second)
	id := ""
	for id == "" {
		var jobs []struct {
			ID    string `json:"id"`
			Name  string `json:"name"`
			State string `json:"state"`
		}
		r := w.must("alice", "jobs", "--json")
		if err := json.Unmarshal([]byte(r.stdout), &jobs); err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs {
			if j.Name == "schedule:tick" && j.State == "completed" {
				id = j.ID
			}
		}
		if id == "" && time.Now().After(deadline) {
			t.Fatalf("no completed scheduled job after 15s:\n%s", r.stdout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r := w.must("alice", "logs", id); !strings.Contains(r.stdout, "hello e2e") {
		t.Errorf("scheduled job's log: %s", r)
	}
	r = w.must("alice", "schedule", "list")
	if !strings.Contains(r.stdout, "tick") || !strings.Contains(r.stdout, "@every 1s") || !strings.Contains(r.stdout, "who=e2e") {
		t.Errorf("schedule list:\n%s", r.stdout)
	}
	if r := w.exits(1, "bob", "schedule", "rm", "tick"); !strings.Contains(r.stderr, "alice") {
		t.Errorf("bob removes alice's schedule: %s", r)
	}
	w.must("alice", "schedule", "rm", "tick")
	if r := w.exits(1, "alice", "schedule", "rm", "tick"); !strings.Contains(r.stderr, `no schedule "tick"`) {
		t.Errorf("rm again: %s", r)
	}
	if r := w.must("val", "schedule", "list", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("list after rm: %s", r.stdout)
	}
}
