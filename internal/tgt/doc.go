// Package tgt is Bulkhead's one typed wrapper around the tgt userspace iSCSI
// target (tgtd and tgtadm), which the node agent uses to export snapshots
// and volumes to a backupd on another node (DESIGN §5 step 3, §7).
//
// It has three layers:
//
//   - Admin runs single tgtadm commands (through internal/command) and
//     parses what tgtadm shows. Its errors carry tgtadm's message and wrap
//     an errdefs kind: ErrNotFound ("can't find the target/account/logical
//     unit", "this access control rule does not exist"), ErrConflict
//     ("already exists", "still active"), ErrInvalid ("invalid request"),
//     ErrUnavailable (no tgtd answers on the control port).
//   - Daemon runs a tgtd of its own (tests, or an agent that owns its tgtd).
//   - Exporter turns an Export (target IQN, backing file, one initiator
//     name, one CHAP account) into tgt state idempotently, and Reconcile
//     makes tgtd's state equal a wanted set, for example after tgtd or the
//     agent restarted.
//
// # How tgt behaves (Debian 12, tgt 1.0.85)
//
// These were observed with the real tgtd; the tests hold several of them.
//
//   - tgtd keeps everything in memory. A restarted tgtd is empty: no
//     targets, no accounts. Exports must be re-created (Reconcile).
//   - The control "port" (-C N) is not a TCP port but a unix socket,
//     /var/run/tgtd/socket.N with a lock file beside it, and N must be in
//     1..32767 (MaxControlPort). A second tgtd on the same N exits at once
//     ("another tgtd is using ..."). tgtd does not remove these files when
//     it stops; Daemon.Stop does.
//   - When tgtd cannot bind its portal (address in use) it logs the failure
//     and keeps running without a portal; StartDaemon checks the portal
//     list and fails instead of returning a deaf daemon.
//   - SIGTERM does not stop tgtd (not even without targets). It stops on
//     "tgtadm --op delete --mode system", which tgt refuses ("invalid
//     request") while targets exist; so every target is deleted first, with
//     --force if initiators are logged in ("this target is still active").
//   - The ACL admits an initiator whose address OR whose name is bound;
//     an empty ACL admits nobody (login status 0x0203, target not found),
//     and SendTargets discovery hides targets the ACL refuses. "ALL" as an
//     address admits everybody. Exports bind exactly one initiator name,
//     never an address. tgtadm shows addresses and names in one list
//     (addresses first); Show tells them apart by syntax.
//   - The ACL and CHAP are checked at login only. Unbinding an initiator
//     does not end its sessions; Exporter closes them when it takes an
//     initiator's access away. Replacing the account does not end the
//     admitted initiator's sessions either, and Exporter leaves them: a
//     backup keeps streaming while an agent that uses the system's tgtd
//     restarts (an agent's own tgtd, --run-tgtd, stops with it).
//   - A target with no incoming account bound does not ask for CHAP at all,
//     whatever the initiator sends. So the account is bound before the
//     initiator name, and whenever an account is replaced the ACL is
//     emptied first; deleting an account silently unbinds it from every
//     target. Wrong or missing CHAP fails the login with 0x0201.
//   - Accounts are global to the tgtd, not per target, and survive the
//     deletion of the targets they were bound to.
//   - tgtadm never shows a CHAP password, so Exporter remembers (as a hash)
//     which secret it set for each user; a secret it does not know is
//     reset by re-creating the account. tgtd itself accepts passwords of
//     any length; RFC 3720 asks for at least 12 bytes (96 bits) and
//     Microsoft's initiator at most 16, so Export requires 12 to 16.
//   - Read-only LUNs: "--params readonly=1" is refused on "logicalunit
//     --op new" ("option '-P' is not allowed/supported") and --bsoflags only
//     knows sync and direct, but "logicalunit --op update --params
//     readonly=1" works: the LUN reports write protection (qemu: "LUN is
//     write protected") and writes fail. AddLUN adds and then updates; the
//     target's ACL is still empty at that moment, so nobody sees the LUN
//     writable.
//   - The size tgtadm shows is in (roughly decimal) megabytes:
//     mb = (s/512 - (s/512/625 - 974)) / 1950 for s bytes; LUN.SizeBytes is
//     that times 10^6, not the exact size. Ask the initiator (READ CAPACITY)
//     or the backing file for the exact size.
//   - LUN 0 of every target is tgt's controller LUN (type controller, no
//     backing store); data LUNs start at 1. Show leaves LUN 0 out.
//   - The first command of every new session gets UNIT ATTENTION (power
//     on/reset, as TESTING.md records); initiators must retry it (libiscsi and
//     qemu do, so the tests here never see it).
//   - Every tgtadm failure exits 22 (EINVAL) whatever went wrong, and 107
//     when no tgtd listens on the control port; only the message on stderr
//     tells the cases apart. "this target already exists" is the answer to
//     both a taken tid and a taken target name.
//   - A logical unit with commands in flight cannot be deleted ("this
//     logical unit is still active"), and neither can its target, --force
//     or not: --force only overrides logged-in sessions. RemoveTarget
//     closes the sessions ("--mode conn --op delete") and retries; the
//     ACL is emptied before, so initiators cannot log straight back in.
//     Exporter re-creates a target whose backing file is to change rather
//     than swap its LUN under initiators.
package tgt
