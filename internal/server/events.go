package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/job"
)

// Followers of a job's output, logs and progress share one feed per job:
// one goroutine reads the store for new records (and the job for its
// state) while anyone follows, keeps the recent records in a ring and
// wakes the followers, each of which writes at its own pace from its own
// position. A follower that falls behind the ring reads the store; a
// follower that stops reading is dropped by its write deadline. Nothing
// a follower does reaches the engine.
//
// Progress and step events of the jobs this server runs come from the
// engine as they happen (live events), records only once the engine has
// stored them. So that a follower sees them in the order they happened,
// as a foreground run prints them, each live event is anchored to the
// last record observed before it, and is written after that record.

const (
	ringSize     = 4096  // records a feed keeps for its followers
	liveRingSize = 1024  // live events a feed keeps
	liveLogSize  = 256   // live events kept per run of a job
	maxLiveLogs  = 16384 // runs kept before the least recently used go
	pageSize     = 1000  // records read from the store at once
	keepAlive    = 15 * time.Second
	// anchorWait is how long a live event waits for the record it follows
	// to be stored, or read by a feed, before it is placed without it.
	anchorWait = 5 * time.Second
)

type hub struct {
	s         *Server
	mu        sync.Mutex
	feeds     map[string]*feed
	logs      map[string][]*liveLog // job id -> its runs' live events, oldest first
	nlogs     int
	swept     time.Time
	closed    chan struct{}
	closeOnce sync.Once
}

func newHub(s *Server) *hub {
	return &hub{s: s, feeds: map[string]*feed{}, logs: map[string][]*liveLog{}, closed: make(chan struct{})}
}

// closeAll ends every event stream, for a shutdown.
func (h *hub) closeAll() { h.closeOnce.Do(func() { close(h.closed) }) }

// liveEvent is a progress or step event of a job this server runs.
type liveEvent struct {
	name     string // api.StreamProgress or api.StreamStep
	data     any
	at       time.Time
	anchor   string    // key of the last record observed before it in its run; "" when none
	anchorAt time.Time // when that record was observed
	pos      int64     // once placed: it follows the records with Seq <= pos
}

// liveLog is one run's live events of one job.
type liveLog struct {
	jobID   string
	base    int64 // events trimmed from the front
	events  []liveEvent
	first   string // key of the run's first record observed
	firstAt time.Time
	last    string // and of its last
	lastAt  time.Time
	ended   time.Time // zero while the run goes on
	touched time.Time
}

func recKey(jobID string, s job.Stream, key string) string {
	return jobID + "\x00" + string(s) + "\x00" + key
}

// runLog returns the live log of a job's current run. Call with h.mu.
func (h *hub) runLog(jobID string) *liveLog {
	now := time.Now()
	runs := h.logs[jobID]
	if n := len(runs); n > 0 && runs[n-1].ended.IsZero() {
		runs[n-1].touched = now
		return runs[n-1]
	}
	l := &liveLog{jobID: jobID, touched: now}
	h.logs[jobID] = append(runs, l)
	h.nlogs++
	if h.nlogs > maxLiveLogs {
		h.sweepLocked(now, true)
	}
	return l
}

// sweepLocked drops the logs of runs that ended a while ago (their feeds
// have long read them) and, when there are too many, the least recently
// used.
func (h *hub) sweepLocked(now time.Time, crowded bool) {
	if now.Sub(h.swept) < time.Second {
		return
	}
	h.swept = now
	for id, runs := range h.logs {
		kept := runs[:0]
		for _, l := range runs {
			stale := !l.ended.IsZero() && now.Sub(l.ended) > 10*time.Second ||
				now.Sub(l.touched) > 10*time.Minute || crowded && now.Sub(l.touched) > time.Minute
			if !stale {
				kept = append(kept, l)
			}
		}
		h.nlogs -= len(runs) - len(kept)
		if len(kept) == 0 {
			delete(h.logs, id)
		} else {
			h.logs[id] = kept
		}
	}
}

// observeRecord notes a record as the engine makes it, before it is
// stored: the live events that follow are anchored to it.
func (h *hub) observeRecord(r job.Record) {
	now := time.Now()
	k := recKey(r.JobID, r.Stream, r.Key)
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.runLog(r.JobID)
	if l.first == "" {
		l.first, l.firstAt = k, now
	}
	l.last, l.lastAt = k, now
}

// observeLive notes a live event of a job.
func (h *hub) observeLive(jobID, name string, data any) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.runLog(jobID)
	l.events = append(l.events, liveEvent{name: name, data: data, at: now, anchor: l.last, anchorAt: l.lastAt})
	if n := len(l.events); n > liveLogSize {
		drop := n - liveLogSize/2
		l.base += int64(drop)
		l.events = append([]liveEvent(nil), l.events[drop:]...)
	}
}

// runEnded marks the end of a job's run (and its children's); its feed
// reads the job now.
func (h *hub) runEnded(jobID string) {
	now := time.Now()
	h.mu.Lock()
	prefix := jobID + "."
	for id, runs := range h.logs {
		if id == jobID || strings.HasPrefix(id, prefix) {
			for _, l := range runs {
				if l.ended.IsZero() {
					l.ended = now
				}
			}
		}
	}
	h.sweepLocked(now, false)
	f := h.feeds[jobID]
	h.mu.Unlock()
	if f != nil {
		f.kick()
	}
}

// feed is the shared reader of one followed job.
type feed struct {
	h      *hub
	id     string
	family bool // a parent: its children's records too
	kickCh chan struct{}
	stop   chan struct{}

	mu       sync.Mutex
	subs     int
	ch       chan struct{} // closed and replaced at every change
	base     int64         // recs holds every record with base < Seq <= last
	last     int64
	recs     []job.Record
	seqOf    map[string]int64 // record key -> Seq, for the records in recs
	job      *job.Job
	state    job.State
	polled   bool // the job was read at least once
	gone     bool // the job was removed
	final    bool // it stopped being followable and its last records were read after that
	live     []liveEvent
	liveN    int64              // live events ever placed; live holds the last ones
	sawLive  bool               // a live progress event was placed
	consumed map[*liveLog]int64 // live events of each log placed already
}

func (h *hub) subscribe(id string, family bool, after int64) *feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.feeds[id]
	if f != nil {
		f.mu.Lock()
		f.subs++
		f.mu.Unlock()
		return f
	}
	f = &feed{h: h, id: id, family: family, kickCh: make(chan struct{}, 1), stop: make(chan struct{}),
		subs: 1, ch: make(chan struct{}), base: after, last: after, seqOf: map[string]int64{},
		consumed: map[*liveLog]int64{}}
	h.feeds[id] = f
	go f.run()
	return f
}

func (h *hub) unsubscribe(f *feed) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f.mu.Lock()
	f.subs--
	last := f.subs == 0
	f.mu.Unlock()
	if last {
		delete(h.feeds, f.id)
		close(f.stop)
	}
}

// kick makes a followed job's feed read the store now.
func (h *hub) kick(id string) {
	h.mu.Lock()
	f := h.feeds[id]
	h.mu.Unlock()
	if f != nil {
		f.kick()
	}
}

func (f *feed) kick() {
	select {
	case f.kickCh <- struct{}{}:
	default:
	}
}

func (f *feed) broadcastLocked() {
	close(f.ch)
	f.ch = make(chan struct{})
}

func (f *feed) run() {
	t := time.NewTicker(f.h.s.o.Poll)
	defer t.Stop()
	for {
		f.poll()
		select {
		case <-f.stop:
			return
		case <-f.h.closed:
			return
		case <-t.C:
		case <-f.kickCh:
		}
	}
}

// read reads records after a position: both streams, and the children's
// with family, in Seq order.
func (h *hub) read(ctx context.Context, id string, family bool, after int64, limit int) ([]job.Record, error) {
	if rf, ok := h.s.st.(recordFollower); ok {
		return rf.RecordsSince(ctx, id, family, after, limit)
	}
	out, err := h.s.st.Records(ctx, id, job.Output, after, limit)
	if err != nil {
		return nil, err
	}
	logs, err := h.s.st.Records(ctx, id, job.Log, after, limit)
	if err != nil {
		return nil, err
	}
	out = append(out, logs...)
	sort.Slice(out, func(i, k int) bool { return out[i].Seq < out[k].Seq })
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// lastSeq is the Seq of a job's last record (with family, of its
// children's too).
func (h *hub) lastSeq(ctx context.Context, id string, family bool) (int64, error) {
	if ls, ok := h.s.st.(lastSeq); ok {
		return ls.LastSeq(ctx, id, family)
	}
	var last int64
	for {
		recs, err := h.read(ctx, id, family, last, pageSize)
		if err != nil {
			return 0, err
		}
		if len(recs) > 0 {
			last = recs[len(recs)-1].Seq
		}
		if len(recs) < pageSize {
			return last, nil
		}
	}
}

// logView is what a poll reads of a live log.
type logView struct {
	l       *liveLog
	base    int64
	events  []liveEvent
	first   string
	firstAt time.Time
	ended   bool
}

// liveLogs returns the live logs the feed places events of: its job's,
// and its children's for a family.
func (f *feed) liveLogs() []logView {
	h := f.h
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logView
	add := func(runs []*liveLog) {
		for _, l := range runs {
			out = append(out, logView{l: l, base: l.base, events: l.events[:len(l.events):len(l.events)],
				first: l.first, firstAt: l.firstAt, ended: !l.ended.IsZero()})
		}
	}
	add(h.logs[f.id])
	if f.family {
		prefix := f.id + "."
		for id, runs := range h.logs {
			if strings.HasPrefix(id, prefix) {
				add(runs)
			}
		}
	}
	return out
}

// poll reads the job, then the records written since the last poll: a
// job seen ended here has its last records in this read, since the
// engine commits them with its final state. Then it places the live
// events whose records it has read.
func (f *feed) poll() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := f.h.s
	j, err := s.st.Job(ctx, f.id)
	if errors.Is(err, job.ErrNotFound) {
		f.mu.Lock()
		f.gone, f.polled = true, true
		f.broadcastLocked()
		f.mu.Unlock()
		return
	}
	if err != nil {
		s.log.Warn("following a job", "job", f.id, "err", err)
		return
	}
	state := s.eng.EffectiveState(j)
	f.mu.Lock()
	after := f.last
	f.mu.Unlock()
	var recs []job.Record
	complete := true
	for {
		page, err := f.h.read(ctx, f.id, f.family, after, pageSize)
		if err != nil {
			s.log.Warn("following a job's records", "job", f.id, "err", err)
			complete = false
			break
		}
		recs = append(recs, page...)
		if len(page) < pageSize {
			break
		}
		after = page[len(page)-1].Seq
		if len(recs) >= ringSize {
			complete = false // the rest at the next poll, right away
			f.kick()
			break
		}
	}
	logs := f.liveLogs()

	f.mu.Lock()
	defer f.mu.Unlock()
	changed := !f.polled || f.gone
	f.polled, f.gone = true, false
	if len(recs) > 0 {
		for _, r := range recs {
			f.seqOf[recKey(r.JobID, r.Stream, r.Key)] = r.Seq
		}
		f.recs = append(f.recs, recs...)
		f.last = recs[len(recs)-1].Seq
		if n := len(f.recs); n > ringSize {
			drop := n - ringSize
			for _, r := range f.recs[:drop] {
				delete(f.seqOf, recKey(r.JobID, r.Stream, r.Key))
			}
			f.base = f.recs[drop-1].Seq
			f.recs = append([]job.Record(nil), f.recs[drop:]...)
		}
		changed = true
	}
	placed, all := f.placeLocked(logs)
	if placed {
		changed = true
	}
	if f.job == nil || !j.Updated.Equal(f.job.Updated) || state != f.state {
		changed = true
	}
	f.job, f.state = j, state
	final := complete && all && !api.Follow(j, state)
	if final != f.final {
		changed = true
	}
	f.final = final
	if changed {
		f.broadcastLocked()
	}
}

// placeLocked places the live events whose anchors it can now place, in
// each log's order. It reports whether it placed any, and whether every
// event is placed.
func (f *feed) placeLocked(logs []logView) (placedAny, all bool) {
	all = true
	now := time.Now()
	var placed []liveEvent
	seen := make(map[*liveLog]bool, len(logs))
	for _, lv := range logs {
		seen[lv.l] = true
		i := max(f.consumed[lv.l], lv.base)
		for ; i < lv.base+int64(len(lv.events)); i++ {
			ev := lv.events[i-lv.base]
			pos, ok := f.anchorLocked(ev, lv, now)
			if !ok {
				break
			}
			ev.pos = pos
			placed = append(placed, ev)
		}
		f.consumed[lv.l] = i
		if i < lv.base+int64(len(lv.events)) {
			all = false
		}
	}
	for l := range f.consumed {
		if !seen[l] {
			delete(f.consumed, l)
		}
	}
	if len(placed) == 0 {
		return false, all
	}
	sort.SliceStable(placed, func(i, k int) bool { return placed[i].pos < placed[k].pos })
	for _, ev := range placed {
		if ev.name == api.StreamProgress {
			f.sawLive = true
		}
	}
	f.live = append(f.live, placed...)
	f.liveN += int64(len(placed))
	if n := len(f.live); n > liveRingSize {
		f.live = append([]liveEvent(nil), f.live[n-liveRingSize/2:]...)
	}
	return true, all
}

// anchorLocked finds where a live event goes among the records: after the
// record it was observed after, or before the run's first record.
func (f *feed) anchorLocked(ev liveEvent, lv logView, now time.Time) (int64, bool) {
	key, keyAt, before := ev.anchor, ev.anchorAt, false
	if key == "" {
		if lv.first == "" {
			// No record in this run yet: after what is stored now, once
			// a record that came first would have been stored.
			if lv.ended || now.Sub(ev.at) > 2*f.h.s.o.Poll+250*time.Millisecond {
				return f.last, true
			}
			return 0, false
		}
		key, keyAt, before = lv.first, lv.firstAt, true
	}
	if seq, ok := f.seqOf[key]; ok {
		if before {
			return seq - 1, true
		}
		return seq, true
	}
	if now.Sub(keyAt) > anchorWait {
		// Stored before this feed's ring began (or never): before it.
		return f.base - 1, true
	}
	return 0, false
}

// snapshot is what a follower takes from its feed at one time.
type snapshot struct {
	recs    []job.Record // after the follower's position, from the ring
	behind  bool         // the position is before the ring: read the store
	base    int64
	last    int64
	job     *job.Job
	state   job.State
	polled  bool
	gone    bool
	final   bool
	live    []liveEvent
	liveN   int64
	sawLive bool
	ch      chan struct{}
}

func (f *feed) snap(cursor, liveCursor int64) snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	sn := snapshot{base: f.base, last: f.last, job: f.job, state: f.state, polled: f.polled, gone: f.gone, final: f.final,
		liveN: f.liveN, sawLive: f.sawLive, ch: f.ch}
	if cursor < f.base {
		sn.behind = true
	} else {
		i := sort.Search(len(f.recs), func(i int) bool { return f.recs[i].Seq > cursor })
		sn.recs = f.recs[i:len(f.recs):len(f.recs)]
	}
	if n := f.liveN - liveCursor; n > 0 {
		n = min(n, int64(len(f.live)))
		sn.live = f.live[int64(len(f.live))-n : len(f.live) : len(f.live)]
	}
	return sn
}

// sse writes one follower's event stream.
type sse struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	buf     bytes.Buffer
}

func (e *sse) event(name, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if id != "" {
		e.buf.WriteString("id: " + id + "\n")
	}
	e.buf.WriteString("event: " + name + "\ndata: ")
	e.buf.Write(data)
	e.buf.WriteString("\n\n")
	if e.buf.Len() >= 32<<10 {
		return e.flush()
	}
	return nil
}

func (e *sse) comment(text string) {
	e.buf.WriteString(": " + text + "\n\n")
}

// flush writes what is buffered. A client that does not take it within
// the timeout is dropped.
func (e *sse) flush() error {
	if e.buf.Len() == 0 {
		return nil
	}
	_ = e.rc.SetWriteDeadline(time.Now().Add(e.timeout))
	_, err := e.w.Write(e.buf.Bytes())
	e.buf.Reset()
	if err != nil {
		return err
	}
	return e.rc.Flush()
}

// events is GET /jobs/{id}/events: the job's records, progress, live
// steps and state as server-sent events, from the position in
// Last-Event-ID (or ?after=) on, until the job stops being followable
// (see api.Follow): then an end event, and the stream ends.
func (s *Server) events(w http.ResponseWriter, r *http.Request, u user) *httpError {
	ctx := r.Context()
	id := r.PathValue("id")
	j, he := s.jobFor(ctx, u, id)
	if he != nil {
		return he
	}
	if s.draining.Load() {
		return errorf(http.StatusServiceUnavailable, "unavailable", "the server is shutting down; reconnect to the next one")
	}
	want := map[string]bool{}
	streams := r.URL.Query().Get("streams")
	if streams == "" {
		streams = "output,log,progress,step,state"
	}
	for _, name := range strings.Split(streams, ",") {
		switch name = strings.TrimSpace(name); name {
		case api.StreamOutput, api.StreamLog, api.StreamProgress, api.StreamStep, api.StreamState:
			want[name] = true
		default:
			return badRequest("streams: unknown stream %q (want output, log, progress, step, state)", name)
		}
	}
	var after int64
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("Last-Event-ID: want a record's sequence number, got %q", v)
		}
		after = n
	} else {
		var he *httpError
		if after, he = intParam(r, "after", 0, 0, 1<<62); he != nil {
			return he
		}
	}
	family := len(j.Spec) > 0
	if v := r.URL.Query().Get("family"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return badRequest("family: want true or false, got %q", v)
		}
		family = b
	}

	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	out := &sse{w: w, rc: rc, timeout: s.o.StreamWriteTimeout}
	out.buf.WriteString("retry: 2000\n\n")
	if err := out.flush(); err != nil {
		return nil
	}

	f := s.hub.subscribe(id, family, after)
	defer s.hub.unsubscribe(f)
	s.metrics.followers.Inc()
	defer s.metrics.followers.Dec()

	cursor := after
	var liveCursor int64
	var sentState job.State
	var sentProgress *job.Progress
	ping := time.NewTicker(keepAlive)
	defer ping.Stop()
	for {
		sn := f.snap(cursor, liveCursor)
		if sn.behind {
			recs, err := s.hub.read(ctx, id, family, cursor, pageSize)
			if err != nil {
				s.log.Warn("following a job's records", "job", id, "err", err)
				return nil
			}
			if len(recs) == 0 {
				// The ring starts later than anything stored after
				// cursor: nothing was skipped.
				cursor = max(cursor, sn.base)
				continue
			}
			for _, rec := range recs {
				if err := out.record(want, rec); err != nil {
					return nil
				}
				cursor = rec.Seq
			}
			if err := out.flush(); err != nil {
				return nil
			}
			continue
		}
		// Records and live events in the order they happened.
		live := sn.live
		writeLive := func(upTo int64) error {
			for len(live) > 0 && live[0].pos < upTo {
				ev := live[0]
				live = live[1:]
				if ev.pos < after || !want[ev.name] {
					continue // before this follower's position, or not asked for
				}
				if ev.name == api.StreamProgress {
					p := ev.data.(api.ProgressEvent)
					if p.JobID == id {
						sentProgress = &p.Progress
					}
				}
				if err := out.event(ev.name, "", ev.data); err != nil {
					return err
				}
			}
			return nil
		}
		for _, rec := range sn.recs {
			if err := writeLive(rec.Seq); err != nil {
				return nil
			}
			if err := out.record(want, rec); err != nil {
				return nil
			}
			cursor = rec.Seq
		}
		if err := writeLive(1 << 62); err != nil {
			return nil
		}
		liveCursor = sn.liveN
		if sn.gone {
			_ = out.event("end", "", api.End{Gone: true})
			_ = out.flush()
			return nil
		}
		if sn.job != nil {
			// A job this server does not run has no live progress: its
			// stored progress, as it changes.
			if want[api.StreamProgress] && !sn.sawLive && (sentProgress == nil || *sentProgress != sn.job.Progress) {
				p := sn.job.Progress
				sentProgress = &p
				if p != (job.Progress{}) {
					if err := out.event(api.StreamProgress, "", api.ProgressEvent{JobID: id, Progress: p}); err != nil {
						return nil
					}
				}
			}
			if want[api.StreamState] && sn.state != sentState {
				sentState = sn.state
				v := api.Job{Job: sn.job, State: sn.state}
				if err := out.event(api.StreamState, "", v); err != nil {
					return nil
				}
			}
			if sn.final && cursor >= sn.last {
				v := api.Job{Job: sn.job, State: sn.state}
				_ = out.event("end", "", api.End{Job: &v})
				_ = out.flush()
				return nil
			}
		}
		if err := out.flush(); err != nil {
			return nil
		}
		select {
		case <-sn.ch:
		case <-ctx.Done():
			return nil
		case <-s.hub.closed:
			return nil
		case <-ping.C:
			out.comment("ping")
		}
	}
}

// record writes a record as an output or log event, if the follower
// asked for its stream. Its id is its Seq, which Last-Event-ID resumes
// after.
func (e *sse) record(want map[string]bool, rec job.Record) error {
	name := api.StreamOutput
	if rec.Stream == job.Log {
		name = api.StreamLog
	}
	if !want[name] {
		return nil
	}
	return e.event(name, fmt.Sprint(rec.Seq), rec)
}
