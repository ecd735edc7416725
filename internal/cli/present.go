package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/drover/drover/internal/engine"
	"github.com/drover/drover/internal/job"
)

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// formatOutput renders an emitted value: strings as they are, anything
// else as compact JSON, one per line.
func formatOutput(v json.RawMessage) string {
	var s string
	if len(v) > 0 && v[0] == '"' && json.Unmarshal(v, &s) == nil {
		return s
	}
	return string(v)
}

// formatLog renders a log line, prefixed by its host when it came from one.
func formatLog(r job.Record) string {
	if r.Host != "" && r.Host != engine.Local {
		return r.Host + ": " + r.Text
	}
	return r.Text
}

// live shows a running job: output on stdout, logs and progress on
// stderr. On a terminal a status line is redrawn in place; on a pipe
// progress changes are plain lines.
type live struct {
	stdout, stderr io.Writer
	tty            bool
	verbose        bool
	quietOutput    bool

	mu       sync.Mutex
	done     int
	replayed int
	running  map[string]string // step key -> description
	progress map[string]job.Progress
	lastProg string
	status   bool // a status line is on screen
	start    time.Time
	stop     chan struct{}
	stopped  chan struct{}
}

func newLive(stdout, stderr io.Writer, tty, verbose bool) *live {
	l := &live{stdout: stdout, stderr: stderr, tty: tty, verbose: verbose,
		running: map[string]string{}, progress: map[string]job.Progress{}, start: time.Now(),
		stop: make(chan struct{}), stopped: make(chan struct{})}
	if tty {
		go l.ticker()
	} else {
		close(l.stopped)
	}
	return l
}

var _ engine.Observer = (*live)(nil)

func (l *live) ticker() {
	defer close(l.stopped)
	t := time.NewTicker(120 * time.Millisecond)
	defer t.Stop()
	frame := 0
	for {
		select {
		case <-l.stop:
			l.mu.Lock()
			l.clearLocked()
			l.mu.Unlock()
			return
		case <-t.C:
			frame++
			l.mu.Lock()
			l.drawLocked(frame)
			l.mu.Unlock()
		}
	}
}

// Close removes the status line.
func (l *live) Close() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.stopped
}

var spinner = []string{"⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"}

func (l *live) drawLocked(frame int) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s · %d steps done", spinner[frame%len(spinner)], time.Since(l.start).Round(time.Second), l.done)
	if n := len(l.running); n > 0 {
		keys := make([]string, 0, n)
		for k := range l.running {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, " · %d running: %s", n, l.running[keys[0]])
		if n > 1 {
			fmt.Fprintf(&b, " +%d", n-1)
		}
	}
	for _, p := range l.progress {
		b.WriteString(" · " + progressText(p))
		break
	}
	line := b.String()
	if w, _, err := term.GetSize(int(os.Stderr.Fd())); err == nil && w > 4 && len([]rune(line)) > w-1 {
		line = string([]rune(line)[:w-2]) + "…"
	}
	fmt.Fprintf(l.stderr, "\r\033[K%s", line)
	l.status = true
}

func (l *live) clearLocked() {
	if l.status {
		fmt.Fprint(l.stderr, "\r\033[K")
		l.status = false
	}
}

func progressText(p job.Progress) string {
	s := fmt.Sprintf("%g", p.Done)
	if p.Total > 0 {
		s = fmt.Sprintf("%g/%g (%d%%)", p.Done, p.Total, int(100*p.Done/p.Total))
	}
	if p.Message != "" {
		s += " " + p.Message
	}
	return s
}

func (l *live) Record(r job.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clearLocked()
	switch r.Stream {
	case job.Output:
		if !l.quietOutput {
			fmt.Fprintln(l.stdout, formatOutput(r.Value))
		}
	case job.Log:
		// Command output is in drover logs; the terminal shows print()
		// lines unless asked for everything.
		if l.verbose || !isCommandLine(r.Key) {
			fmt.Fprintln(l.stderr, formatLog(r))
		}
	}
}

// isCommandLine tells a command's output line (key 3.s1, 3.e2) from a
// print() line (key 3.l1).
func isCommandLine(key string) bool {
	i := strings.LastIndexByte(key, '.')
	return i >= 0 && i+1 < len(key) && (key[i+1] == 's' || key[i+1] == 'e')
}

func (l *live) Step(ev engine.StepEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !ev.Done {
		desc := ev.Activity
		if ev.Host != "" {
			desc += " on " + ev.Host
		}
		l.running[ev.JobID+"/"+ev.Key] = desc + " (" + ev.Key + ")"
		return
	}
	delete(l.running, ev.JobID+"/"+ev.Key)
	if ev.Err == nil {
		l.done++
		if ev.Replayed {
			l.replayed++
		}
	}
}

func (l *live) Progress(jobID string, p job.Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.progress[jobID] = p
	if !l.tty {
		text := progressText(p)
		if text != l.lastProg {
			l.lastProg = text
			fmt.Fprintln(l.stderr, "progress:", text)
		}
	}
}

// summary prints how a foreground job ended and returns its exit code.
func (a *app) summary(j *job.Job, multi bool) int {
	d := ""
	if !j.Started.IsZero() {
		end := j.Ended
		if end.IsZero() {
			end = j.Updated
		}
		d = " in " + end.Sub(j.Started).Round(time.Millisecond).String()
	}
	switch j.State {
	case job.Completed:
		if a.isTerminal || multi {
			fmt.Fprintf(a.stderr, "job %s completed%s (%d steps)\n", j.ID, d, j.Steps)
		}
		return ExitOK
	case job.Failed:
		fmt.Fprintf(a.stderr, "job %s failed%s\n%s\n", j.ID, d, j.Error)
		return ExitFailed
	case job.Stopped:
		fmt.Fprintf(a.stderr, "job %s stopped: %s\n", j.ID, j.Reason)
		return ExitFailed
	case job.Suspended:
		why := j.Reason
		if j.Error != "" && !strings.Contains(why, j.Error) {
			why += "\n" + j.Error
		}
		fmt.Fprintf(a.stderr, "job %s suspended: %s\nresume it with: drover resume %s\n", j.ID, why, j.ID)
		return ExitPending
	case job.Waiting:
		if len(j.WaitFor) > 0 {
			fmt.Fprintf(a.stderr, "job %s is waiting for signal %s\n", j.ID, strings.Join(j.WaitFor, ", "))
			if !j.WakeAt.IsZero() {
				fmt.Fprintf(a.stderr, "it times out at %s\n", j.WakeAt.Local().Format(time.RFC3339))
			}
			fmt.Fprintf(a.stderr, "send it with: drover signal %s %s '{...}'\nthen continue it with: drover resume %s\n", j.ID, j.WaitFor[0], j.ID)
		} else if j.WakeAt.IsZero() {
			// A script's job at drover step --wait: its reason says where.
			fmt.Fprintf(a.stderr, "job %s is %s\n", j.ID, j.Reason)
		} else {
			fmt.Fprintf(a.stderr, "job %s is waiting until %s\ncontinue it then with: drover resume %s\n", j.ID, j.WakeAt.Local().Format(time.RFC3339), j.ID)
		}
		return ExitPending
	case job.Queued:
		fmt.Fprintf(a.stderr, "job %s is queued\ncontinue it with: drover resume %s\n", j.ID, j.ID)
		return ExitPending
	}
	fmt.Fprintf(a.stderr, "job %s is %s\n", j.ID, j.State)
	return ExitFailed
}
