package iscsi

import (
	"encoding/binary"
	"fmt"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// SCSI commands this initiator sends (SBC-4). The 16-byte forms carry
// 64-bit LBAs, so every LUN size works.
const (
	opReadCapacity16 = 0x9e // SERVICE ACTION IN(16), service action 0x10
	opRead16         = 0x88
	opWrite16        = 0x8a
)

func readCapacity16CDB() (cdb [16]byte) {
	cdb[0] = opReadCapacity16
	cdb[1] = 0x10
	binary.BigEndian.PutUint32(cdb[10:], readCapacity16Len)
	return cdb
}

// readCapacity16Len is the allocation length asked for: the whole
// parameter data of SBC-4 (32 bytes).
const readCapacity16Len = 32

func rwCDB(op byte, lba uint64, blocks uint32) (cdb [16]byte) {
	cdb[0] = op
	binary.BigEndian.PutUint64(cdb[2:], lba)
	binary.BigEndian.PutUint32(cdb[10:], blocks)
	return cdb
}

func cdbName(cdb [16]byte) string {
	switch cdb[0] {
	case opReadCapacity16:
		return "READ CAPACITY(16)"
	case opRead16:
		return "READ(16)"
	case opWrite16:
		return "WRITE(16)"
	}
	return fmt.Sprintf("SCSI opcode 0x%02x", cdb[0])
}

// Status is a SCSI status byte (SAM-5 5.3).
type Status uint8

// The SCSI statuses a target returns.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

var statusNames = map[Status]string{
	StatusGood: "GOOD", StatusCheckCondition: "CHECK CONDITION", StatusConditionMet: "CONDITION MET",
	StatusBusy: "BUSY", StatusReservationConflict: "RESERVATION CONFLICT",
	StatusTaskSetFull: "TASK SET FULL", StatusACAActive: "ACA ACTIVE", StatusTaskAborted: "TASK ABORTED",
}

func (s Status) String() string {
	if n, ok := statusNames[s]; ok {
		return fmt.Sprintf("%s (0x%02x)", n, uint8(s))
	}
	return fmt.Sprintf("status 0x%02x", uint8(s))
}

// SenseKey is the sense key of sense data (SPC-5 4.4.2).
type SenseKey uint8

// Sense keys.
const (
	SenseNoSense        SenseKey = 0x0
	SenseRecoveredError SenseKey = 0x1
	SenseNotReady       SenseKey = 0x2
	SenseMediumError    SenseKey = 0x3
	SenseHardwareError  SenseKey = 0x4
	SenseIllegalRequest SenseKey = 0x5
	SenseUnitAttention  SenseKey = 0x6
	SenseDataProtect    SenseKey = 0x7
	SenseBlankCheck     SenseKey = 0x8
	SenseAbortedCommand SenseKey = 0xb
	SenseMiscompare     SenseKey = 0xe
)

var senseKeyNames = map[SenseKey]string{
	SenseNoSense: "NO SENSE", SenseRecoveredError: "RECOVERED ERROR", SenseNotReady: "NOT READY",
	SenseMediumError: "MEDIUM ERROR", SenseHardwareError: "HARDWARE ERROR",
	SenseIllegalRequest: "ILLEGAL REQUEST", SenseUnitAttention: "UNIT ATTENTION",
	SenseDataProtect: "DATA PROTECT", SenseBlankCheck: "BLANK CHECK", 0x9: "VENDOR SPECIFIC",
	0xa: "COPY ABORTED", SenseAbortedCommand: "ABORTED COMMAND", 0xd: "VOLUME OVERFLOW",
	SenseMiscompare: "MISCOMPARE",
}

func (k SenseKey) String() string {
	if n, ok := senseKeyNames[k]; ok {
		return fmt.Sprintf("%s (0x%x)", n, uint8(k))
	}
	return fmt.Sprintf("sense key 0x%x", uint8(k))
}

// Sense is what sense data says (fixed or descriptor format).
type Sense struct {
	Key       SenseKey
	ASC, ASCQ uint8
}

// ascNames describes the additional sense codes a block target commonly
// returns (SPC-5 Annex F).
var ascNames = map[[2]uint8]string{
	{0x00, 0x00}: "no additional sense information",
	{0x04, 0x00}: "logical unit not ready, cause not reportable",
	{0x04, 0x01}: "logical unit is in process of becoming ready",
	{0x0c, 0x00}: "write error",
	{0x11, 0x00}: "unrecovered read error",
	{0x20, 0x00}: "invalid command operation code",
	{0x21, 0x00}: "logical block address out of range",
	{0x24, 0x00}: "invalid field in CDB",
	{0x25, 0x00}: "logical unit not supported",
	{0x26, 0x00}: "invalid field in parameter list",
	{0x27, 0x00}: "write protected",
	{0x28, 0x00}: "not ready to ready change, medium may have changed",
	{0x29, 0x00}: "power on, reset, or bus device reset occurred",
	{0x29, 0x01}: "power on occurred",
	{0x29, 0x02}: "SCSI bus reset occurred",
	{0x29, 0x03}: "bus device reset function occurred",
	{0x29, 0x04}: "device internal reset",
	{0x2a, 0x01}: "mode parameters changed",
	{0x2a, 0x09}: "capacity data has changed",
	{0x3a, 0x00}: "medium not present",
	{0x3f, 0x0e}: "reported LUNs data has changed",
	{0x44, 0x00}: "internal target failure",
}

func (s Sense) String() string {
	str := fmt.Sprintf("sense key %v, ASC/ASCQ 0x%02x/0x%02x", s.Key, s.ASC, s.ASCQ)
	if n, ok := ascNames[[2]uint8{s.ASC, s.ASCQ}]; ok {
		str += " (" + n + ")"
	}
	return str
}

// parseSense parses the sense data of a SCSI Response's data segment,
// which starts with a 2-byte SenseLength (RFC 7143 11.4.7.2).
func parseSense(data []byte) (Sense, bool) {
	if len(data) < 2 {
		return Sense{}, false
	}
	n := int(binary.BigEndian.Uint16(data))
	b := data[2:]
	if n < len(b) {
		b = b[:n]
	}
	if len(b) < 2 {
		return Sense{}, false
	}
	switch b[0] & 0x7f {
	case 0x70, 0x71: // fixed format
		if len(b) < 3 {
			return Sense{}, false
		}
		s := Sense{Key: SenseKey(b[2] & 0x0f)}
		if len(b) >= 14 {
			s.ASC, s.ASCQ = b[12], b[13]
		}
		return s, true
	case 0x72, 0x73: // descriptor format
		s := Sense{Key: SenseKey(b[1] & 0x0f)}
		if len(b) >= 4 {
			s.ASC, s.ASCQ = b[2], b[3]
		}
		return s, true
	}
	return Sense{}, false
}

// SCSIError is a SCSI command that the target completed with a status
// other than GOOD, or whose iSCSI response said the target failed.
type SCSIError struct {
	Command string // "READ(16)"
	LUN     uint64
	LBA     uint64 // for READ and WRITE
	Status  Status
	// Sense is the sense data, valid when HasSense.
	Sense    Sense
	HasSense bool
	// Response is the iSCSI response code (RFC 7143 11.4.3): 0 when the
	// target completed the command, 1 when the target failed it.
	Response uint8
}

func (e *SCSIError) Error() string {
	where := fmt.Sprintf("%s LUN %d", e.Command, e.LUN)
	if e.Command == "READ(16)" || e.Command == "WRITE(16)" {
		where += fmt.Sprintf(" LBA %d", e.LBA)
	}
	if e.Response != 0 {
		return fmt.Sprintf("iscsi: %s: target failure (iSCSI response 0x%02x)", where, e.Response)
	}
	if e.HasSense {
		return fmt.Sprintf("iscsi: %s: %v, %v", where, e.Status, e.Sense)
	}
	return fmt.Sprintf("iscsi: %s: %v", where, e.Status)
}

// Unwrap returns the errdefs kind the error is of, if any: ErrForbidden
// for DATA PROTECT (a write-protected LUN), ErrInvalid for ILLEGAL REQUEST
// (such as an LBA out of range), ErrUnavailable for NOT READY, BUSY and
// TASK SET FULL.
func (e *SCSIError) Unwrap() error {
	switch {
	case e.Status == StatusBusy || e.Status == StatusTaskSetFull:
		return errdefs.ErrUnavailable
	case !e.HasSense:
		return nil
	case e.Sense.Key == SenseDataProtect:
		return errdefs.ErrForbidden
	case e.Sense.Key == SenseIllegalRequest:
		return errdefs.ErrInvalid
	case e.Sense.Key == SenseNotReady:
		return errdefs.ErrUnavailable
	}
	return nil
}

// unitAttention reports whether e is a UNIT ATTENTION, which reports an
// event (a reset, a new session) rather than a failure of the command.
func (e *SCSIError) unitAttention() bool {
	return e.Response == 0 && e.Status == StatusCheckCondition && e.HasSense && e.Sense.Key == SenseUnitAttention
}

// busy reports whether the target asked to try the command later.
func (e *SCSIError) busy() bool {
	return e.Response == 0 && (e.Status == StatusBusy || e.Status == StatusTaskSetFull)
}
