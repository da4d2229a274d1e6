// Package iscsi is Bulkhead's own iSCSI initiator, in pure Go (RFC 7143):
// backupd reads snapshots that node agents export with tgt (internal/tgt)
// through it, since neither a kernel initiator nor a Go iSCSI library is
// available.
//
// # What it does
//
// Discover runs a SendTargets discovery session. Dial opens a normal
// session of one TCP connection: login with security negotiation (none,
// or CHAP with MD5, one-way or mutual) and operational negotiation, then
// the full-feature phase, where a reader goroutine hands every PDU the
// target sends to the command waiting for it by Initiator Task Tag.
// Session.ReadCapacity, ReadAt and WriteAt issue READ CAPACITY(16),
// READ(16) and WRITE(16); ReadAt and WriteAt split transfers at the
// negotiated MaxBurstLength and keep up to Config.MaxInFlight commands in
// flight, within the target's CmdSN window. Session.LUN adapts one LUN to
// io.ReaderAt and io.WriterAt.
//
// Deliberately left out: digests (HeaderDigest and DataDigest are None),
// more than one connection per session, ErrorRecoveryLevel above 0, SNACK,
// bidirectional commands, keepalive NOP-Outs of its own (NOP-Ins are
// answered). With ErrorRecoveryLevel 0 every connection failure ends the
// session; callers Dial again.
//
// # Rules a caller sees
//
//   - Offsets and lengths of ReadAt and WriteAt are multiples of the
//     LUN's block size, or the call fails with errdefs.ErrInvalid before
//     anything is sent.
//   - Every call takes a context. A cancelled context makes the call
//     return at once; the command itself goes on in the background (the
//     target has it): a read's data is dropped, a write keeps answering
//     R2Ts from a copy of its data, so a cancelled write may still land.
//   - A command unanswered after Config.Timeout fails with ErrTimeout and
//     breaks the session (ErrSessionBroken, which also matches
//     errdefs.ErrUnavailable); so does a lost connection, a protocol
//     violation by the target or its asynchronous request to log out.
//     Later calls fail at once.
//   - A refused login is a *LoginError naming the status the target
//     answered, "authentication failure (0x0201)" for example, and
//     wrapping an errdefs kind (ErrUnauthenticated, ErrForbidden,
//     ErrNotFound, ...). A target failing mutual CHAP is ErrUnauthenticated
//     too.
//   - A SCSI failure is a *SCSIError with status, sense key and ASC/ASCQ
//     by name ("DATA PROTECT (0x7), ASC/ASCQ 0x27/0x00 (write
//     protected)"). CHECK CONDITION with UNIT ATTENTION is retried (it
//     reports an event, such as the new session, not a failure), and so
//     are BUSY and TASK SET FULL, a few times.
//
// # RFC 7143 details worth knowing
//
//   - Login requests are immediate and consume no CmdSN; the first
//     command of the full-feature phase carries the CmdSN of the login.
//     Logout here is not immediate, so it queues behind the commands in
//     flight (Close waits for them anyway).
//   - ExpCmdSN and MaxCmdSN come in nearly every target PDU, in serial
//     number arithmetic; they only ever advance, a MaxCmdSN of ExpCmdSN-1
//     means the window is closed, and a PDU whose MaxCmdSN is below
//     ExpCmdSN-1 does not update them.
//   - A NOP-In with ITT 0xffffffff does not advance StatSN. One with a
//     Target Transfer Tag is a ping: the answer is an immediate NOP-Out
//     with ITT 0xffffffff, the same tag and data, and the current CmdSN
//     (not advanced).
//   - Data-In carries status only with the S bit (then F is set too);
//     otherwise a SCSI Response follows, the only place for sense data
//     (a 2-byte length, then fixed- or descriptor-format sense).
//   - DataSN of Data-Out restarts at 0 for every R2T's sequence;
//     unsolicited data (immediate data, and Data-Out with TTT 0xffffffff
//     when InitialR2T=No) is one sequence bounded by FirstBurstLength, and
//     every Data-Out PDU by the target's MaxRecvDataSegmentLength.
//   - Text answered with the Continue bit is asked for again with an empty
//     request: a Login Request with T=0 and the same stages, or a Text
//     Request with the target's Target Transfer Tag.
//   - A key the target proposes on its own must be answered in the next
//     request; declarative keys (MaxRecvDataSegmentLength, TargetAlias,
//     TargetPortalGroupTag) are not. MaxRecvDataSegmentLength is declared
//     by each side for what it receives, so the two directions differ.
//
// # How tgt (1.0.85, Debian 12) answers
//
//   - Operational parameters: MaxRecvDataSegmentLength=8192 for its own
//     side (so immediate data and each Data-Out PDU carry at most 8 KiB),
//     MaxBurstLength=262144, FirstBurstLength=65536, InitialR2T=Yes,
//     ImmediateData=Yes, MaxOutstandingR2T=1, DefaultTime2Wait=2. A write
//     therefore sends 8 KiB with the command and the rest after R2Ts.
//   - The login response opens a CmdSN window of two commands
//     (MaxCmdSN = ExpCmdSN+1); the first answers open it to 128.
//   - The first command of every new session gets CHECK CONDITION, UNIT
//     ATTENTION, ASC/ASCQ 0x29/0x00 (power on, reset, or bus device reset
//     occurred).
//   - A target without an incoming CHAP account takes only
//     AuthMethod=None and refuses a login that offers CHAP alone (0x0201);
//     so one-way CHAP offers "CHAP,None" and mutual CHAP, which must not
//     let the target skip authentication, offers "CHAP". Mutual CHAP needs
//     an outgoing account on the target (tgt.Admin.BindOutgoingAccount);
//     without one the login fails with 0x0201 as well.
//   - An initiator outside the ACL, and a target name tgt does not have,
//     both get 0x0203 (target not found), not 0x0202; SendTargets lists
//     only the targets whose ACL admits the initiator, with
//     TargetAddress "<portal>,1".
//   - Reads of a LUN that does not exist fail with ILLEGAL REQUEST
//     0x25/0x00, past the end with 0x21/0x00; writes to a read-only LUN
//     with DATA PROTECT 0x27/0x00. Successful reads end with the S bit in
//     the last Data-In, failures with a SCSI Response.
//   - ABORT TASK for a write still waiting for its Data-Out is answered
//     "task does not exist" while tgt goes on waiting for the data, which
//     is why abandoned writes are completed rather than aborted.
//   - Stopping tgtd with its targets deleted --force resets the
//     connection: commands in flight fail at once with ErrSessionBroken;
//     a frozen tgtd (SIGSTOP) is caught by the timeout.
package iscsi
