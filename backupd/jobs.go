package backupd

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulkhead-io/bulkhead/api/backuppb"
)

// Why a job's context was cancelled; they become its fail_reason.
var (
	errCancelled = errors.New("cancelled")
	errStopping  = errors.New("backupd stopping")
)

// maxReasonLen bounds a fail_reason; the log has the whole error.
const maxReasonLen = 1024

// job is one backup or restore, keyed by its backup id.
type job struct {
	id string
	op backuppb.JobOperation
	// What identifies the work, so a repeated Start call can be told from
	// a different one: for a backup the volume, container and parent; for
	// a restore the backup's volume, container and the volume written.
	volumeID  string
	container string
	parentID  string
	target    string // restore: the volume written

	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the job has finished

	mu         sync.Mutex
	state      backuppb.JobState
	bytesDone  int64
	bytesTotal int64
	failReason string
	finished   time.Time
}

func (j *job) status() *backuppb.JobStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	return &backuppb.JobStatus{BackupId: j.id, State: j.state, Operation: j.op, TargetVolumeId: j.target,
		BytesDone: j.bytesDone, BytesTotal: j.bytesTotal, FailReason: j.failReason}
}

func (j *job) running() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.state == backuppb.JobState_JOB_STATE_RUNNING
}

// progress is the callback repo.Backup and repo.Restore report to.
func (j *job) progress(done, total int64) {
	j.mu.Lock()
	j.bytesDone, j.bytesTotal = done, total
	j.mu.Unlock()
}

func (j *job) setTotal(total int64) {
	j.mu.Lock()
	j.bytesTotal = total
	j.mu.Unlock()
}

// jobTable holds the jobs in memory: a restart of backupd forgets them,
// and Status then answers UNKNOWN, which the controller's reconciler
// treats as failed (DESIGN §5 step 7). Finished jobs stay for retention
// so the controller can read their outcome.
type jobTable struct {
	maxJobs   int
	retention time.Duration
	log       *slog.Logger
	metrics   *metrics

	mu       sync.Mutex
	jobs     map[string]*job
	stopping bool
}

func newJobTable(maxJobs int, retention time.Duration, log *slog.Logger, m *metrics) *jobTable {
	return &jobTable{maxJobs: maxJobs, retention: retention, log: log, metrics: m, jobs: map[string]*job{}}
}

// start runs j with work unless the table holds a job for the same id:
// then decide says whether to keep that job (its status is returned and
// nothing starts), to refuse the call (decide's error), or to replace it
// by j (keep false, err nil). work's error, or the reason its context was
// cancelled, becomes the outcome.
func (t *jobTable) start(j *job, decide func(old *job) (keep bool, err error), work func(ctx context.Context, j *job) error) (*backuppb.JobStatus, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked()
	if old := t.jobs[j.id]; old != nil {
		keep, err := decide(old)
		if err != nil {
			return nil, err
		}
		if keep {
			return old.status(), nil
		}
	}
	if t.stopping {
		return nil, status.Error(codes.Unavailable, "backupd is stopping")
	}
	running := 0
	for _, o := range t.jobs {
		if o.running() {
			running++
		}
	}
	if running >= t.maxJobs {
		return nil, status.Errorf(codes.ResourceExhausted, "backupd runs %d jobs, its limit (--max-jobs); try again later or another backupd", running)
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	j.cancel, j.done, j.state = cancel, make(chan struct{}), backuppb.JobState_JOB_STATE_RUNNING
	t.jobs[j.id] = j
	t.metrics.running.WithLabelValues(opName(j.op)).Inc()
	t.log.Info("job started", "backup", j.id, "op", opName(j.op), "volume", j.volumeID, "container", j.container)
	go func() {
		start := time.Now()
		err := work(ctx, j)
		cause := context.Cause(ctx) // nil unless cancelled
		cancel(nil)
		t.finish(j, err, cause, time.Since(start))
	}()
	return j.status(), nil
}

// finish records a job's outcome. A job that succeeded is DONE even when
// a cancel came too late to stop it: its manifest exists.
func (t *jobTable) finish(j *job, err, cause error, took time.Duration) {
	outcome := "done"
	j.mu.Lock()
	j.finished = time.Now()
	switch {
	case err == nil:
		j.state = backuppb.JobState_JOB_STATE_DONE
	case errors.Is(cause, errCancelled) || errors.Is(cause, errStopping):
		j.state, j.failReason = backuppb.JobState_JOB_STATE_FAILED, cause.Error()
		outcome = "cancelled"
	default:
		j.state, j.failReason = backuppb.JobState_JOB_STATE_FAILED, err.Error()
		if len(j.failReason) > maxReasonLen {
			j.failReason = j.failReason[:maxReasonLen-3] + "..."
		}
		outcome = "failed"
	}
	done, total := j.bytesDone, j.bytesTotal
	j.mu.Unlock()
	close(j.done)

	op := opName(j.op)
	t.metrics.running.WithLabelValues(op).Dec()
	t.metrics.finished.WithLabelValues(op, outcome).Inc()
	t.metrics.duration.WithLabelValues(op, outcome).Observe(took.Seconds())
	if err == nil {
		t.log.Info("job done", "backup", j.id, "op", op, "volume", j.volumeID, "bytes", total, "took", took.Round(time.Millisecond))
	} else {
		t.log.Warn("job failed", "backup", j.id, "op", op, "volume", j.volumeID, "bytes_done", done, "bytes_total", total,
			"took", took.Round(time.Millisecond), "err", err, "cause", cause)
	}
}

func (t *jobTable) get(id string) *job {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked()
	return t.jobs[id]
}

// pruneLocked forgets jobs finished more than retention ago.
func (t *jobTable) pruneLocked() {
	for id, j := range t.jobs {
		j.mu.Lock()
		expired := !j.finished.IsZero() && time.Since(j.finished) > t.retention
		j.mu.Unlock()
		if expired {
			delete(t.jobs, id)
		}
	}
}

// cancelWait is how long Cancel waits for the job to stop, so that the
// controller may then remove the export the job reads from.
const cancelWait = 30 * time.Second

// cancel stops the job for id, if running, and waits until it has
// finished, ctx ends, or cancelWait passes.
func (t *jobTable) cancel(ctx context.Context, id string) {
	j := t.get(id)
	if j == nil || !j.running() {
		return
	}
	j.cancel(errCancelled)
	select {
	case <-j.done:
	case <-ctx.Done():
	case <-time.After(cancelWait):
	}
}

func (t *jobTable) list() []*backuppb.JobStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pruneLocked()
	out := make([]*backuppb.JobStatus, 0, len(t.jobs))
	for _, j := range t.jobs {
		out = append(out, j.status())
	}
	sort.Slice(out, func(a, b int) bool { return out[a].GetBackupId() < out[b].GetBackupId() })
	return out
}

// stop refuses new jobs, cancels the running ones and waits for them
// until ctx ends. It returns how many still run.
func (t *jobTable) stop(ctx context.Context) int {
	t.mu.Lock()
	t.stopping = true
	var running []*job
	for _, j := range t.jobs {
		if j.running() {
			j.cancel(errStopping)
			running = append(running, j)
		}
	}
	t.mu.Unlock()
	left := 0
	for _, j := range running {
		select {
		case <-j.done:
		case <-ctx.Done():
			left++
		}
	}
	return left
}

func opName(op backuppb.JobOperation) string {
	if op == backuppb.JobOperation_JOB_OPERATION_RESTORE {
		return "restore"
	}
	return "backup"
}
