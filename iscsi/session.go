package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Session is a logged-in iSCSI session of one connection in the
// full-feature phase. Its methods may be called from several goroutines at
// once; commands from all of them share the session's CmdSN window and
// MaxInFlight.
//
// A session is broken (ErrSessionBroken) once its connection fails, a
// command times out, the target breaks the protocol or asks to log out;
// every later call fails at once, and the caller must Dial again
// (ErrorRecoveryLevel 0 has no other recovery).
type Session struct {
	cfg    Config
	log    *slog.Logger
	conn   net.Conn
	br     *bufio.Reader
	params params
	where  string // "session with <target> at <portal>"

	// wlock is held while PDUs are written; a channel so that waiting for
	// it can end with ctx.
	wlock chan struct{}
	wmu   sync.Mutex // guards writeGen, writing, interrupted
	// writeGen counts writes; a cancelled ctx interrupts only the write it
	// was watching.
	writeGen    uint64
	writing     bool
	interrupted bool

	slots chan struct{} // a token per command in flight (MaxInFlight)
	dead  chan struct{} // closed when err is set

	mu        sync.Mutex
	cmdSN     uint32 // the next CmdSN to use
	expCmdSN  uint32
	maxCmdSN  uint32
	expStatSN uint32
	nextITT   uint32
	tasks     map[uint32]*task
	changed   chan struct{} // closed and replaced when the CmdSN window opens
	err       error         // why the session is unusable; nil while it works
	closing   bool
	blockSize map[uint64]uint32

	readerDone chan struct{}
}

// Dial connects to cfg.Portal, logs in to cfg.TargetIQN (security
// negotiation with CHAP when cfg has credentials, then operational
// negotiation) and returns the session in its full-feature phase. A
// refused login is a *LoginError.
func Dial(ctx context.Context, cfg Config) (*Session, error) {
	cfg, err := cfg.withDefaults(false)
	if err != nil {
		return nil, err
	}
	conn, err := dialTCP(ctx, cfg.Portal)
	if err != nil {
		return nil, err
	}
	l, err := newLoginConn(cfg, conn, false)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := l.login(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	p := l.params
	cfg.Logger.Debug("iscsi session logged in", "target", cfg.TargetIQN, "portal", cfg.Portal,
		"tsih", l.tsih, "alias", l.alias, "max_recv_data", p.maxRecvData, "max_xmit_data", p.maxXmitData,
		"max_burst", p.maxBurst, "first_burst", p.firstBurst, "initial_r2t", p.initialR2T,
		"immediate_data", p.immediateData, "max_outstanding_r2t", p.maxR2T,
		"exp_cmdsn", l.expCmdSN, "max_cmdsn", l.maxCmdSN)
	s := &Session{
		cfg: cfg, log: cfg.Logger, conn: conn, br: l.br, params: p,
		where:      "session with " + cfg.TargetIQN + " at " + cfg.Portal,
		wlock:      make(chan struct{}, 1),
		slots:      make(chan struct{}, cfg.MaxInFlight),
		dead:       make(chan struct{}),
		cmdSN:      l.cmdSN,
		expCmdSN:   l.expCmdSN,
		maxCmdSN:   l.maxCmdSN,
		expStatSN:  l.expStatSN,
		nextITT:    0x100,
		tasks:      map[uint32]*task{},
		changed:    make(chan struct{}),
		blockSize:  map[uint64]uint32{},
		readerDone: make(chan struct{}),
	}
	go s.readLoop()
	return s, nil
}

// targetError is the target ending the session on purpose.
type targetError struct{ msg string }

func (e *targetError) Error() string { return e.msg }

type taskKind int

const (
	kindSCSI taskKind = iota
	kindLogout
)

// task is one command the target has to answer, found by its Initiator
// Task Tag when the answer comes.
type task struct {
	kind    taskKind
	itt     uint32
	lun     uint64 // the LUN number
	lunF    uint64 // the LUN field
	cdb     [16]byte
	read    bool
	write   bool
	buf     []byte // Data-In lands here; Data-Out comes from here
	size    int    // len(buf), which the reader checks offsets against
	hasSlot bool

	timer *time.Timer
	r2ts  chan *readyToTransfer // writes only
	done  chan struct{}         // closed by finish

	mu          sync.Mutex // guards the fields up to cond
	abandoned   bool       // the caller left; data for the task is dropped
	reading     bool       // the reader is reading into buf
	interrupted bool       // abandon cut that read short
	received    int
	cond        *sync.Cond // signalled when reading ends

	finished bool // guarded by Session.mu

	// The outcome, set before done is closed.
	status    Status
	response  uint8
	sense     Sense
	hasSense  bool
	underflow bool
	overflow  bool
	residual  uint32
	err       error
}

func (t *task) describe() string {
	switch t.kind {
	case kindLogout:
		return "logout"
	}
	s := fmt.Sprintf("%s LUN %d", cdbName(t.cdb), t.lun)
	if t.cdb[0] == opRead16 || t.cdb[0] == opWrite16 {
		s += fmt.Sprintf(" LBA %d", be64(t.cdb[2:]))
	}
	return s
}

// fail sets the session's error (the first one wins), closes the
// connection, and fails every task still waiting for an answer.
func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	close(s.dead)
	tasks := s.tasks
	s.tasks = map[uint32]*task{}
	s.mu.Unlock()
	s.conn.Close()
	for _, t := range tasks {
		s.finish(t, func(t *task) { t.err = err }, true)
	}
}

// breakSession fails the session with cause.
func (s *Session) breakSession(cause error) {
	s.fail(&brokenError{where: s.where, cause: cause})
}

// usable returns why the session cannot take commands, or nil.
func (s *Session) usable() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.closing {
		return fmt.Errorf("iscsi: %s: %w", s.where, ErrClosed)
	}
	return nil
}

// finish completes t once: set records the outcome, t leaves the task
// table and gives its slot back. removed says fail took t out of the
// table already.
func (s *Session) finish(t *task, set func(*task), removed bool) {
	s.mu.Lock()
	if t.finished {
		s.mu.Unlock()
		return
	}
	t.finished = true
	if !removed && s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	s.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
	}
	set(t)
	if t.hasSlot {
		<-s.slots
	}
	close(t.done)
}

// updateSNs takes ExpCmdSN and MaxCmdSN from a target PDU (RFC 7143
// 4.2.2.1): values out of window are ignored, and both only ever advance.
func (s *Session) updateSNs(exp, max uint32) {
	if int32(max-exp) < -1 {
		return
	}
	s.mu.Lock()
	if int32(exp-s.expCmdSN) > 0 {
		s.expCmdSN = exp
	}
	if int32(max-s.maxCmdSN) > 0 {
		s.maxCmdSN = max
		close(s.changed)
		s.changed = make(chan struct{})
	}
	s.mu.Unlock()
}

func (s *Session) updateStatSN(statSN uint32) {
	s.mu.Lock()
	if int32(statSN+1-s.expStatSN) > 0 {
		s.expStatSN = statSN + 1
	}
	s.mu.Unlock()
}

func (s *Session) lookup(itt uint32) *task {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasks[itt]
}

// readLoop reads every PDU the target sends and hands it to its task.
func (s *Session) readLoop() {
	defer close(s.readerDone)
	buf := make([]byte, s.params.maxRecvData+4)
	for {
		p, info, err := readHeader(s.br, s.params.maxRecvData)
		if err == nil {
			if d, ok := p.(*dataIn); ok {
				err = s.readDataIn(d, info.dataLen)
			} else if err = readData(s.br, p, info, buf); err == nil {
				err = s.handle(p)
			}
		}
		if err != nil {
			var te *targetError
			if !errors.Is(err, errProtocol) && !errors.As(err, &te) {
				err = connLost(err)
			}
			s.breakSession(err)
			return
		}
	}
}

func (s *Session) handle(p pdu) error {
	switch p := p.(type) {
	case *scsiResponse:
		s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
		s.updateStatSN(p.StatSN)
		t := s.lookup(p.ITT)
		if t == nil || t.kind != kindSCSI {
			return fmt.Errorf("%w: SCSI Response for unknown task 0x%x", errProtocol, p.ITT)
		}
		sense, hasSense := Sense{}, false
		if p.Status == uint8(StatusCheckCondition) {
			sense, hasSense = parseSense(p.Data)
		}
		s.finish(t, func(t *task) {
			t.status, t.response, t.sense, t.hasSense = Status(p.Status), p.Response, sense, hasSense
			t.underflow, t.overflow, t.residual = p.Underflow, p.Overflow, p.Residual
		}, false)
	case *readyToTransfer:
		s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
		t := s.lookup(p.ITT)
		if t == nil || !t.write {
			return fmt.Errorf("%w: R2T for unknown write task 0x%x", errProtocol, p.ITT)
		}
		if p.DesiredLength == 0 || uint64(p.BufferOffset)+uint64(p.DesiredLength) > uint64(t.size) ||
			int(p.DesiredLength) > s.params.maxBurst {
			return fmt.Errorf("%w: R2T for bytes %d+%d of a %d-byte write (MaxBurstLength %d)",
				errProtocol, p.BufferOffset, p.DesiredLength, t.size, s.params.maxBurst)
		}
		select {
		case t.r2ts <- p:
		default:
			return fmt.Errorf("%w: more than MaxOutstandingR2T=%d R2Ts outstanding", errProtocol, s.params.maxR2T)
		}
	case *nopIn:
		s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
		if p.ITT != reservedTag {
			s.updateStatSN(p.StatSN)
		}
		if p.TTT != reservedTag {
			// The target pings: answer with its tag and data, without
			// waiting here, so that reading goes on.
			reply := &nopOut{immediateFlag: immediateFlag{true}, ITT: reservedTag, TTT: p.TTT, LUN: p.LUN,
				segment: segment{append([]byte(nil), p.Data...)}}
			go s.sendNOPReply(reply)
		}
	case *logoutResponse:
		s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
		s.updateStatSN(p.StatSN)
		t := s.lookup(p.ITT)
		if t == nil || t.kind != kindLogout {
			return fmt.Errorf("%w: logout response for unknown task 0x%x", errProtocol, p.ITT)
		}
		s.finish(t, func(t *task) { t.response = p.Response }, false)
	case *reject:
		s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
		s.updateStatSN(p.StatSN)
		itt, ok := p.rejectedITT()
		var t *task
		if ok {
			t = s.lookup(itt)
		}
		if t == nil {
			// A rejected NOP-Out or Data-Out has no task of its own to fail.
			return fmt.Errorf("%w: target rejected a PDU: %s", errProtocol, rejectReason(p.Reason))
		}
		err := fmt.Errorf("iscsi: target rejected %s: %s", t.describe(), rejectReason(p.Reason))
		s.finish(t, func(t *task) { t.err = err }, false)
	case *asyncMessage:
		s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
		s.updateStatSN(p.StatSN)
		switch p.Event {
		case asyncSCSI:
			sense, _ := parseSense(p.Data)
			s.log.Debug("iscsi asynchronous SCSI event", "session", s.where, "sense", sense.String())
		case asyncLogoutRequest:
			return &targetError{fmt.Sprintf("target asked to log out (asynchronous event 1, within %d s)", p.Param3)}
		case asyncDropConnection, asyncDropAll:
			return &targetError{fmt.Sprintf("target is dropping the connection (asynchronous event %d)", p.Event)}
		default:
			s.log.Debug("iscsi asynchronous event ignored", "session", s.where, "event", p.Event)
		}
	default:
		return fmt.Errorf("%w: unexpected %v in the full-feature phase", errProtocol, p.op())
	}
	return nil
}

// readDataIn reads the data segment of p, n bytes, straight into its
// task's buffer (no copy through a buffer of the reader's), or drops it
// when the task's caller has left, and handles the status p may carry.
func (s *Session) readDataIn(p *dataIn, n int) error {
	s.updateSNs(p.ExpCmdSN, p.MaxCmdSN)
	if p.HasStatus {
		s.updateStatSN(p.StatSN)
	}
	t := s.lookup(p.ITT)
	if t == nil || !t.read {
		return fmt.Errorf("%w: Data-In for unknown read task 0x%x", errProtocol, p.ITT)
	}
	if uint64(p.BufferOffset)+uint64(n) > uint64(t.size) {
		return fmt.Errorf("%w: Data-In for bytes %d+%d of a %d-byte read", errProtocol, p.BufferOffset, n, t.size)
	}
	if err := s.place(t, t.buf[p.BufferOffset:int(p.BufferOffset)+n]); err != nil {
		return err
	}
	if err := discard(s.br, pad(n)); err != nil {
		return err
	}
	if p.HasStatus {
		if !p.Final {
			return fmt.Errorf("%w: Data-In with status but without the F bit", errProtocol)
		}
		s.finish(t, func(t *task) {
			t.status = Status(p.Status)
			t.underflow, t.overflow, t.residual = p.Underflow, p.Overflow, p.Residual
		}, false)
	}
	return nil
}

// place reads len(dst) bytes of data for t into dst, t's buffer. abandon
// may interrupt the read (a past read deadline), so that a caller who left
// never has its buffer written after it returned; the rest of the data is
// dropped then.
func (s *Session) place(t *task, dst []byte) error {
	t.mu.Lock()
	if t.abandoned {
		t.mu.Unlock()
		return discard(s.br, len(dst))
	}
	t.reading = true
	t.mu.Unlock()
	got, err := io.ReadFull(s.br, dst)
	t.mu.Lock()
	t.reading = false
	interrupted := t.interrupted
	if interrupted {
		t.interrupted = false
		s.conn.SetReadDeadline(time.Time{})
	}
	if err == nil {
		t.received += got
	}
	t.cond.Broadcast()
	t.mu.Unlock()
	if err != nil {
		if !interrupted {
			return noEOF(err)
		}
		return discard(s.br, len(dst)-got)
	}
	return nil
}

// write writes bufs to the connection; the caller holds wlock. If ctx
// ends while the write blocks (the target does not read), the write is cut
// short and the session broken: half a PDU cannot be taken back.
func (s *Session) write(ctx context.Context, bufs net.Buffers) error {
	s.wmu.Lock()
	s.writeGen++
	gen := s.writeGen
	s.writing = true
	s.wmu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if s.writing && s.writeGen == gen {
			s.interrupted = true
			s.conn.SetWriteDeadline(time.Unix(1, 0))
		}
	})
	_, err := bufs.WriteTo(s.conn)
	stop()
	s.wmu.Lock()
	s.writing = false
	interrupted := s.interrupted
	if interrupted {
		s.interrupted = false
		s.conn.SetWriteDeadline(time.Time{})
	}
	s.wmu.Unlock()
	if err != nil {
		if interrupted {
			err = fmt.Errorf("write cut short: %w", context.Cause(ctx))
		} else {
			err = connLost(err)
		}
		s.breakSession(err)
		return s.usable()
	}
	return nil
}

// lockWrite takes wlock, unless ctx ends or the session fails first.
func (s *Session) lockWrite(ctx context.Context) error {
	select {
	case s.wlock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-s.dead:
		return s.usable()
	}
}

func (s *Session) unlockWrite() { <-s.wlock }

func appendPDU(bufs net.Buffers, p pdu) net.Buffers {
	h := header(p)
	bufs = append(bufs, h[:])
	if data := p.payload(); len(data) > 0 {
		bufs = append(bufs, data)
		if n := pad(len(data)); n > 0 {
			bufs = append(bufs, zeros[:n])
		}
	}
	return bufs
}

func (s *Session) sendNOPReply(reply *nopOut) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
	defer cancel()
	if err := s.lockWrite(ctx); err != nil {
		return
	}
	defer s.unlockWrite()
	s.mu.Lock()
	reply.CmdSN, reply.ExpStatSN = s.cmdSN, s.expStatSN
	s.mu.Unlock()
	s.write(ctx, appendPDU(nil, reply))
}

// start registers t, gives it an ITT and a CmdSN from the target's window
// (waiting for the window to open), and sends the PDU that build returns
// for them, followed by more (unsolicited data).
// The timeout watch starts here.
func (s *Session) start(ctx context.Context, t *task, build func(itt, cmdSN, expStatSN uint32) []pdu) error {
	t.done = make(chan struct{})
	// The timeout covers waiting for the window too: a target that never
	// opens it is as dead as one that never answers.
	deadline := time.NewTimer(s.cfg.Timeout)
	defer deadline.Stop()
	for {
		if err := s.lockWrite(ctx); err != nil {
			return err
		}
		s.mu.Lock()
		if s.err != nil {
			s.mu.Unlock()
			s.unlockWrite()
			return s.err
		}
		if int32(s.maxCmdSN-s.cmdSN) >= 0 {
			break // still holding mu and wlock
		}
		changed := s.changed
		s.mu.Unlock()
		s.unlockWrite()
		select {
		case <-changed:
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-s.dead:
			return s.usable()
		case <-deadline.C:
			err := fmt.Errorf("%w: %s: the target's CmdSN window stayed closed for %v", ErrTimeout, t.describe(), s.cfg.Timeout)
			s.breakSession(err)
			return s.usable()
		}
	}
	for {
		s.nextITT++
		if s.nextITT == reservedTag {
			s.nextITT = 0x100
		}
		if s.tasks[s.nextITT] == nil {
			break
		}
	}
	t.itt = s.nextITT
	cmdSN := s.cmdSN
	s.cmdSN++
	s.tasks[t.itt] = t
	pdus := build(t.itt, cmdSN, s.expStatSN)
	s.mu.Unlock()
	t.timer = time.AfterFunc(s.cfg.Timeout, func() { s.timedOut(t) })
	var bufs net.Buffers
	for _, p := range pdus {
		bufs = appendPDU(bufs, p)
	}
	err := s.write(ctx, bufs)
	s.unlockWrite()
	return err
}

// timedOut breaks the session for a task the target left unanswered.
func (s *Session) timedOut(t *task) {
	s.mu.Lock()
	finished := t.finished
	s.mu.Unlock()
	if finished {
		return
	}
	s.breakSession(fmt.Errorf("%w: %s got no answer within %v", ErrTimeout, t.describe(), s.cfg.Timeout))
}

// result is what a SCSI command returned.
type result struct {
	received int // bytes of Data-In
}

// scsi runs one SCSI command on lun: data is read into buf (read), or
// written from it (write). It retries UNIT ATTENTION and, a few times with
// a pause, BUSY and TASK SET FULL.
func (s *Session) scsi(ctx context.Context, lun uint64, cdb [16]byte, buf []byte, read, write bool) (result, error) {
	lunF, err := lunField(lun)
	if err != nil {
		return result{}, fmt.Errorf("%w: iscsi: %v", errdefs.ErrInvalid, err)
	}
	busyPause := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		t := &task{kind: kindSCSI, lun: lun, lunF: lunF, cdb: cdb, buf: buf, size: len(buf), read: read, write: write}
		t.cond = sync.NewCond(&t.mu)
		res, err := s.run(ctx, t)
		se, ok := errors.AsType[*SCSIError](err)
		switch {
		case ok && se.unitAttention() && attempt <= 8:
			s.log.Debug("iscsi retrying after UNIT ATTENTION", "session", s.where, "command", t.describe(),
				"sense", se.Sense.String(), "attempt", attempt)
			continue
		case ok && se.busy() && attempt <= 8:
			s.log.Debug("iscsi target busy, retrying", "session", s.where, "command", t.describe(), "status", se.Status.String())
			select {
			case <-time.After(busyPause):
			case <-ctx.Done():
				return res, fmt.Errorf("iscsi: %s: %w", t.describe(), context.Cause(ctx))
			}
			busyPause *= 2
			continue
		}
		return res, err
	}
}

// run sends t and waits for its outcome.
func (s *Session) run(ctx context.Context, t *task) (result, error) {
	if err := s.usable(); err != nil {
		return result{}, err
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return result{}, fmt.Errorf("iscsi: %s: %w", t.describe(), context.Cause(ctx))
	case <-s.dead:
		return result{}, s.usable()
	}
	t.hasSlot = true
	if t.write {
		t.r2ts = make(chan *readyToTransfer, s.params.maxR2T+1)
	}
	p := s.params
	unsolicited := 0 // bytes sent without an R2T
	err := s.start(ctx, t, func(itt, cmdSN, expStatSN uint32) []pdu {
		cmd := &scsiCommand{Final: true, Read: t.read, Write: t.write, Attr: 1, LUN: t.lunF, ITT: itt,
			ExpectedLength: uint32(t.size), CmdSN: cmdSN, ExpStatSN: expStatSN, CDB: t.cdb}
		pdus := []pdu{cmd}
		if !t.write {
			return pdus
		}
		limit := 0
		if p.immediateData || !p.initialR2T {
			limit = min(t.size, p.firstBurst)
		}
		if p.immediateData {
			n := min(limit, p.maxXmitData)
			cmd.Data = t.buf[:n]
			unsolicited = n
		}
		if !p.initialR2T && unsolicited < limit {
			cmd.Final = false
			pdus = append(pdus, dataOuts(t, reservedTag, unsolicited, limit-unsolicited, p.maxXmitData, expStatSN)...)
			unsolicited = limit
		}
		return pdus
	})
	if err != nil {
		if !t.finishedOrRegistered(s) {
			<-s.slots // never registered: nobody else gives the slot back
		}
		return result{}, s.describeErr(t, err)
	}
	for {
		select {
		case <-t.done:
			return t.outcome()
		case r := <-t.r2ts:
			if err := s.sendR2TData(ctx, t, r); err != nil {
				if s.usable() == nil {
					// ctx ended before any of the data went out: the
					// R2T is still to be answered.
					s.abandon(t, r)
				}
				return result{}, s.describeErr(t, err)
			}
		case <-ctx.Done():
			s.abandon(t, nil)
			return result{}, fmt.Errorf("iscsi: %s: %w", t.describe(), context.Cause(ctx))
		}
	}
}

// finishedOrRegistered reports whether t got into the task table (and so
// will give its slot back when it finishes).
func (t *task) finishedOrRegistered(s *Session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return t.finished || s.tasks[t.itt] == t
}

func (s *Session) describeErr(t *task, err error) error {
	var be *brokenError
	if errors.As(err, &be) || errors.Is(err, ErrClosed) {
		return err
	}
	return fmt.Errorf("iscsi: %s: %w", t.describe(), err)
}

// dataOuts returns the Data-Out PDUs for n bytes of t's buffer at off.
func dataOuts(t *task, ttt uint32, off, n, maxPDU int, expStatSN uint32) []pdu {
	var pdus []pdu
	for sn := uint32(0); n > 0; sn++ {
		size := min(n, maxPDU)
		pdus = append(pdus, &dataOut{LUN: t.lunF, ITT: t.itt, TTT: ttt, ExpStatSN: expStatSN, DataSN: sn,
			BufferOffset: uint32(off), Final: size == n, segment: segment{t.buf[off : off+size]}})
		off += size
		n -= size
	}
	return pdus
}

// sendR2TData answers an R2T with the data it asks for.
func (s *Session) sendR2TData(ctx context.Context, t *task, r *readyToTransfer) error {
	if err := s.lockWrite(ctx); err != nil {
		return err
	}
	defer s.unlockWrite()
	s.mu.Lock()
	expStatSN := s.expStatSN
	s.mu.Unlock()
	var bufs net.Buffers
	for _, p := range dataOuts(t, r.TTT, int(r.BufferOffset), int(r.DesiredLength), s.params.maxXmitData, expStatSN) {
		bufs = appendPDU(bufs, p)
	}
	return s.write(ctx, bufs)
}

// abandon detaches t from a caller that stopped waiting. The command
// still completes: a read's data is dropped when it comes; a write goes on
// answering R2Ts from a copy of the rest of its data, since the caller's
// buffer is no longer ours to read. (ABORT TASK is no alternative: tgt
// answers "task does not exist" for a write still waiting for data, and
// keeps waiting.)
// pending is an R2T taken but not answered yet.
func (s *Session) abandon(t *task, pending *readyToTransfer) {
	t.mu.Lock()
	t.abandoned = true
	if t.write {
		t.buf = slices.Clone(t.buf)
	}
	if t.reading {
		// The reader is filling t.buf: cut its read short and wait.
		t.interrupted = true
		s.conn.SetReadDeadline(time.Unix(1, 0))
		for t.reading {
			t.cond.Wait()
		}
	}
	t.mu.Unlock()
	if t.write {
		go s.finishWrite(t, pending)
	}
}

// finishWrite answers the R2Ts of an abandoned write until it completes
// (or the timeout watch breaks the session).
func (s *Session) finishWrite(t *task, pending *readyToTransfer) {
	ctx := context.Background()
	if pending != nil {
		if err := s.sendR2TData(ctx, t, pending); err != nil {
			return
		}
	}
	for {
		select {
		case <-t.done:
			s.log.Debug("iscsi abandoned write completed", "session", s.where, "command", t.describe(),
				"status", t.status.String(), "err", t.err)
			return
		case r := <-t.r2ts:
			if err := s.sendR2TData(ctx, t, r); err != nil {
				return // the session is broken, and t failed with it
			}
		}
	}
}

// outcome turns t's answer into a result or an error.
func (t *task) outcome() (result, error) {
	t.mu.Lock()
	res := result{received: t.received}
	t.mu.Unlock()
	if t.err != nil {
		var be *brokenError
		if errors.As(t.err, &be) {
			return res, t.err
		}
		return res, fmt.Errorf("iscsi: %s: %w", t.describe(), t.err)
	}
	if t.response != 0 || t.status != StatusGood {
		return res, &SCSIError{Command: cdbName(t.cdb), LUN: t.lun, LBA: be64(t.cdb[2:]), Status: t.status,
			Sense: t.sense, HasSense: t.hasSense, Response: t.response}
	}
	if t.read {
		want := t.size
		if t.underflow {
			want -= int(t.residual)
		}
		if res.received != want {
			return res, fmt.Errorf("%w: iscsi: %s: target sent %d bytes of %d (residual %d)",
				errProtocol, t.describe(), res.received, t.size, t.residual)
		}
	}
	if t.write && t.underflow && t.residual > 0 {
		return res, fmt.Errorf("iscsi: %s: target took %d bytes fewer than sent", t.describe(), t.residual)
	}
	return res, nil
}

// Close logs out and closes the connection. It waits (as long as ctx
// lets it) for commands in flight to finish first; commands started after
// Close began fail with ErrClosed. Closing a broken session only closes
// the connection and returns nil. Close may be called more than once.
func (s *Session) Close(ctx context.Context) error {
	s.mu.Lock()
	already := s.closing || s.err != nil
	s.closing = true
	s.mu.Unlock()
	if already {
		s.fail(fmt.Errorf("iscsi: %s: %w", s.where, ErrClosed))
		<-s.readerDone
		return nil
	}
	err := s.logout(ctx)
	s.fail(fmt.Errorf("iscsi: %s: %w", s.where, ErrClosed))
	<-s.readerDone
	return err
}

func (s *Session) logout(ctx context.Context) error {
	// Drain: every command in flight holds a slot.
	for range cap(s.slots) {
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("iscsi: %s: logout: %w", s.where, context.Cause(ctx))
		case <-s.dead:
			return nil
		}
	}
	t := &task{kind: kindLogout}
	err := s.start(ctx, t, func(itt, cmdSN, expStatSN uint32) []pdu {
		return []pdu{&logoutRequest{Reason: 0, ITT: itt, CmdSN: cmdSN, ExpStatSN: expStatSN}}
	})
	if err == nil {
		select {
		case <-t.done:
			err = t.err
			if err == nil && t.response != 0 {
				err = fmt.Errorf("logout response %d", t.response)
			}
		case <-ctx.Done():
			err = context.Cause(ctx)
		}
	}
	if err != nil {
		if errors.Is(err, ErrSessionBroken) {
			return nil // nothing left to log out of
		}
		return fmt.Errorf("iscsi: %s: logout: %w", s.where, err)
	}
	return nil
}

// Params reports the negotiated operational parameters that matter to a
// caller sizing its I/O.
func (s *Session) Params() Params {
	p := s.params
	return Params{
		MaxRecvDataSegmentLength: p.maxRecvData, TargetMaxRecvDataSegmentLength: p.maxXmitData,
		MaxBurstLength: p.maxBurst, FirstBurstLength: p.firstBurst, InitialR2T: p.initialR2T,
		ImmediateData: p.immediateData, MaxOutstandingR2T: p.maxR2T,
		DefaultTime2Wait: p.time2Wait, DefaultTime2Retain: p.time2Retain,
	}
}

// Params are negotiated operational parameters (RFC 7143 13).
type Params struct {
	MaxRecvDataSegmentLength       int // declared by this initiator
	TargetMaxRecvDataSegmentLength int // declared by the target
	MaxBurstLength                 int
	FirstBurstLength               int
	InitialR2T                     bool
	ImmediateData                  bool
	MaxOutstandingR2T              int
	DefaultTime2Wait               int
	DefaultTime2Retain             int
}
