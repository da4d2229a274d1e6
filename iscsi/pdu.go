package iscsi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The wire format of RFC 7143 section 11: every PDU is a 48-byte basic
// header segment (BHS), optional additional header segments (AHS, counted
// in 4-byte words in byte 4), and an optional data segment (length in bytes
// 5-7) padded with zeros to a multiple of 4 bytes. No digests: this
// initiator negotiates HeaderDigest and DataDigest None.

const bhsLen = 48

// maxDataSegment is the largest data segment the decoder takes at all
// (2^24-1 is what the 24-bit length field can say).
const maxDataSegment = 1<<24 - 1

// reservedTag is the Initiator/Target Transfer Tag meaning "none".
const reservedTag = 0xffffffff

type opcode uint8

// Initiator opcodes (RFC 7143 11.2.1.2).
const (
	opNOPOut   opcode = 0x00
	opSCSICmd  opcode = 0x01
	opTaskMgmt opcode = 0x02
	opLogin    opcode = 0x03
	opText     opcode = 0x04
	opDataOut  opcode = 0x05
	opLogout   opcode = 0x06
)

// Target opcodes.
const (
	opNOPIn        opcode = 0x20
	opSCSIResp     opcode = 0x21
	opTaskMgmtResp opcode = 0x22
	opLoginResp    opcode = 0x23
	opTextResp     opcode = 0x24
	opDataIn       opcode = 0x25
	opLogoutResp   opcode = 0x26
	opR2T          opcode = 0x31
	opAsync        opcode = 0x32
	opReject       opcode = 0x3f
)

var opcodeNames = map[opcode]string{
	opNOPOut: "NOP-Out", opSCSICmd: "SCSI Command", opTaskMgmt: "Task Management Request",
	opLogin: "Login Request", opText: "Text Request", opDataOut: "SCSI Data-Out",
	opLogout: "Logout Request", opNOPIn: "NOP-In", opSCSIResp: "SCSI Response",
	opTaskMgmtResp: "Task Management Response", opLoginResp: "Login Response",
	opTextResp: "Text Response", opDataIn: "SCSI Data-In", opLogoutResp: "Logout Response",
	opR2T: "R2T", opAsync: "Asynchronous Message", opReject: "Reject",
}

func (o opcode) String() string {
	if s, ok := opcodeNames[o]; ok {
		return s
	}
	return fmt.Sprintf("opcode 0x%02x", uint8(o))
}

// Flag bits of byte 1.
const (
	flagFinal    = 0x80
	flagContinue = 0x40 // Login and Text: more text follows
	flagTransit  = 0x80 // Login
	flagRead     = 0x40 // SCSI Command
	flagWrite    = 0x20 // SCSI Command
	flagAck      = 0x40 // Data-In
	flagBiOver   = 0x10 // SCSI Response
	flagBiUnder  = 0x08
	flagOverflow = 0x04 // SCSI Response, Data-In
	flagUnder    = 0x02
	flagStatus   = 0x01 // Data-In: status included
)

// Login stages (CSG and NSG).
const (
	stageSecurity    = 0
	stageOperational = 1
	stageFullFeature = 3
)

// pdu is one decoded PDU. Each type reads and writes only its own fields of
// the BHS; decoding ignores reserved bytes and AHS, so decode∘encode is the
// identity on decoded values (FuzzDecodePDU holds that).
type pdu interface {
	op() opcode
	immediate() bool
	// put writes the opcode-specific fields into h (bytes 1-3 and 8-47).
	put(h *[bhsLen]byte)
	// get reads them from h.
	get(h *[bhsLen]byte)
	payload() []byte
	setPayload([]byte)
}

// segment is the data segment every PDU type carries (possibly empty).
type segment struct{ Data []byte }

func (s *segment) payload() []byte     { return s.Data }
func (s *segment) setPayload(b []byte) { s.Data = b }

// notImmediate is embedded by target PDUs and by initiator PDUs that are
// never immediate.
type notImmediate struct{}

func (notImmediate) immediate() bool { return false }

type immediateFlag struct{ Immediate bool }

func (f immediateFlag) immediate() bool { return f.Immediate }

func be16(b []byte) uint16       { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32       { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64       { return binary.BigEndian.Uint64(b) }
func put16(b []byte, v uint16)   { binary.BigEndian.PutUint16(b, v) }
func put32(b []byte, v uint32)   { binary.BigEndian.PutUint32(b, v) }
func put64(b []byte, v uint64)   { binary.BigEndian.PutUint64(b, v) }
func bit(b byte, mask byte) bool { return b&mask != 0 }

func flag(on bool, mask byte) byte {
	if on {
		return mask
	}
	return 0
}

// loginRequest (11.12).
type loginRequest struct {
	notImmediate // the I bit is always set on the wire
	segment
	Transit, Continue      bool
	CSG, NSG               uint8
	VersionMax, VersionMin uint8
	ISID                   [6]byte
	TSIH                   uint16
	ITT                    uint32
	CID                    uint16
	CmdSN, ExpStatSN       uint32
}

func (*loginRequest) op() opcode { return opLogin }
func (p *loginRequest) put(h *[bhsLen]byte) {
	h[0] |= 0x40
	h[1] = flag(p.Transit, flagTransit) | flag(p.Continue, flagContinue) | (p.CSG&3)<<2 | p.NSG&3
	h[2], h[3] = p.VersionMax, p.VersionMin
	copy(h[8:14], p.ISID[:])
	put16(h[14:], p.TSIH)
	put32(h[16:], p.ITT)
	put16(h[20:], p.CID)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}
func (p *loginRequest) get(h *[bhsLen]byte) {
	p.Transit, p.Continue = bit(h[1], flagTransit), bit(h[1], flagContinue)
	p.CSG, p.NSG = h[1]>>2&3, h[1]&3
	p.VersionMax, p.VersionMin = h[2], h[3]
	copy(p.ISID[:], h[8:14])
	p.TSIH = be16(h[14:])
	p.ITT = be32(h[16:])
	p.CID = be16(h[20:])
	p.CmdSN, p.ExpStatSN = be32(h[24:]), be32(h[28:])
}

// loginResponse (11.13).
type loginResponse struct {
	notImmediate
	segment
	Transit, Continue          bool
	CSG, NSG                   uint8
	VersionMax, VersionActive  uint8
	ISID                       [6]byte
	TSIH                       uint16
	ITT                        uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	StatusClass, StatusDetail  uint8
}

func (*loginResponse) op() opcode { return opLoginResp }
func (p *loginResponse) put(h *[bhsLen]byte) {
	h[1] = flag(p.Transit, flagTransit) | flag(p.Continue, flagContinue) | (p.CSG&3)<<2 | p.NSG&3
	h[2], h[3] = p.VersionMax, p.VersionActive
	copy(h[8:14], p.ISID[:])
	put16(h[14:], p.TSIH)
	put32(h[16:], p.ITT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h[36], h[37] = p.StatusClass, p.StatusDetail
}
func (p *loginResponse) get(h *[bhsLen]byte) {
	p.Transit, p.Continue = bit(h[1], flagTransit), bit(h[1], flagContinue)
	p.CSG, p.NSG = h[1]>>2&3, h[1]&3
	p.VersionMax, p.VersionActive = h[2], h[3]
	copy(p.ISID[:], h[8:14])
	p.TSIH = be16(h[14:])
	p.ITT = be32(h[16:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.StatusClass, p.StatusDetail = h[36], h[37]
}

// putSNs writes StatSN, ExpCmdSN and MaxCmdSN at bytes 24-35, where every
// target PDU that has them keeps them.
func putSNs(h *[bhsLen]byte, stat, exp, max uint32) {
	put32(h[24:], stat)
	put32(h[28:], exp)
	put32(h[32:], max)
}

func getSNs(h *[bhsLen]byte) (stat, exp, max uint32) {
	return be32(h[24:]), be32(h[28:]), be32(h[32:])
}

// textRequest (11.10).
type textRequest struct {
	immediateFlag
	segment
	Final, Continue  bool
	LUN              uint64
	ITT, TTT         uint32
	CmdSN, ExpStatSN uint32
}

func (*textRequest) op() opcode { return opText }
func (p *textRequest) put(h *[bhsLen]byte) {
	h[1] = flag(p.Final, flagFinal) | flag(p.Continue, flagContinue)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}
func (p *textRequest) get(h *[bhsLen]byte) {
	p.Final, p.Continue = bit(h[1], flagFinal), bit(h[1], flagContinue)
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.CmdSN, p.ExpStatSN = be32(h[24:]), be32(h[28:])
}

// textResponse (11.11).
type textResponse struct {
	notImmediate
	segment
	Final, Continue            bool
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
}

func (*textResponse) op() opcode { return opTextResp }
func (p *textResponse) put(h *[bhsLen]byte) {
	h[1] = flag(p.Final, flagFinal) | flag(p.Continue, flagContinue)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
}
func (p *textResponse) get(h *[bhsLen]byte) {
	p.Final, p.Continue = bit(h[1], flagFinal), bit(h[1], flagContinue)
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
}

// scsiCommand (11.3).
type scsiCommand struct {
	immediateFlag
	segment
	Final, Read, Write bool
	Attr               uint8
	LUN                uint64
	ITT                uint32
	ExpectedLength     uint32
	CmdSN, ExpStatSN   uint32
	CDB                [16]byte
}

func (*scsiCommand) op() opcode { return opSCSICmd }
func (p *scsiCommand) put(h *[bhsLen]byte) {
	h[1] = flag(p.Final, flagFinal) | flag(p.Read, flagRead) | flag(p.Write, flagWrite) | p.Attr&7
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.ExpectedLength)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
	copy(h[32:], p.CDB[:])
}
func (p *scsiCommand) get(h *[bhsLen]byte) {
	p.Final, p.Read, p.Write = bit(h[1], flagFinal), bit(h[1], flagRead), bit(h[1], flagWrite)
	p.Attr = h[1] & 7
	p.LUN, p.ITT, p.ExpectedLength = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.CmdSN, p.ExpStatSN = be32(h[24:]), be32(h[28:])
	copy(p.CDB[:], h[32:])
}

// scsiResponse (11.4).
type scsiResponse struct {
	notImmediate
	segment
	BidiOverflow, BidiUnderflow, Overflow, Underflow bool
	Response, Status                                 uint8
	ITT, SNACKTag                                    uint32
	StatSN, ExpCmdSN, MaxCmdSN                       uint32
	ExpDataSN, BidiResidual, Residual                uint32
}

func (*scsiResponse) op() opcode { return opSCSIResp }
func (p *scsiResponse) put(h *[bhsLen]byte) {
	h[1] = flagFinal | flag(p.BidiOverflow, flagBiOver) | flag(p.BidiUnderflow, flagBiUnder) |
		flag(p.Overflow, flagOverflow) | flag(p.Underflow, flagUnder)
	h[2], h[3] = p.Response, p.Status
	put32(h[16:], p.ITT)
	put32(h[20:], p.SNACKTag)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.ExpDataSN)
	put32(h[40:], p.BidiResidual)
	put32(h[44:], p.Residual)
}
func (p *scsiResponse) get(h *[bhsLen]byte) {
	p.BidiOverflow, p.BidiUnderflow = bit(h[1], flagBiOver), bit(h[1], flagBiUnder)
	p.Overflow, p.Underflow = bit(h[1], flagOverflow), bit(h[1], flagUnder)
	p.Response, p.Status = h[2], h[3]
	p.ITT, p.SNACKTag = be32(h[16:]), be32(h[20:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.ExpDataSN, p.BidiResidual, p.Residual = be32(h[36:]), be32(h[40:]), be32(h[44:])
}

// dataIn (11.7).
type dataIn struct {
	notImmediate
	segment
	Final, Ack, Overflow, Underflow, HasStatus bool
	Status                                     uint8
	LUN                                        uint64
	ITT, TTT                                   uint32
	StatSN, ExpCmdSN, MaxCmdSN                 uint32
	DataSN, BufferOffset, Residual             uint32
}

func (*dataIn) op() opcode { return opDataIn }
func (p *dataIn) put(h *[bhsLen]byte) {
	h[1] = flag(p.Final, flagFinal) | flag(p.Ack, flagAck) | flag(p.Overflow, flagOverflow) |
		flag(p.Underflow, flagUnder) | flag(p.HasStatus, flagStatus)
	h[3] = p.Status
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.DataSN)
	put32(h[40:], p.BufferOffset)
	put32(h[44:], p.Residual)
}
func (p *dataIn) get(h *[bhsLen]byte) {
	p.Final, p.Ack, p.HasStatus = bit(h[1], flagFinal), bit(h[1], flagAck), bit(h[1], flagStatus)
	p.Overflow, p.Underflow = bit(h[1], flagOverflow), bit(h[1], flagUnder)
	p.Status = h[3]
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.DataSN, p.BufferOffset, p.Residual = be32(h[36:]), be32(h[40:]), be32(h[44:])
}

// dataOut (11.7).
type dataOut struct {
	notImmediate
	segment
	Final                bool
	LUN                  uint64
	ITT, TTT             uint32
	ExpStatSN            uint32
	DataSN, BufferOffset uint32
}

func (*dataOut) op() opcode { return opDataOut }
func (p *dataOut) put(h *[bhsLen]byte) {
	h[1] = flag(p.Final, flagFinal)
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[28:], p.ExpStatSN)
	put32(h[36:], p.DataSN)
	put32(h[40:], p.BufferOffset)
}
func (p *dataOut) get(h *[bhsLen]byte) {
	p.Final = bit(h[1], flagFinal)
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.ExpStatSN = be32(h[28:])
	p.DataSN, p.BufferOffset = be32(h[36:]), be32(h[40:])
}

// readyToTransfer is an R2T (11.8).
type readyToTransfer struct {
	notImmediate
	segment
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	R2TSN, BufferOffset        uint32
	DesiredLength              uint32
}

func (*readyToTransfer) op() opcode { return opR2T }
func (p *readyToTransfer) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.R2TSN)
	put32(h[40:], p.BufferOffset)
	put32(h[44:], p.DesiredLength)
}
func (p *readyToTransfer) get(h *[bhsLen]byte) {
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.R2TSN, p.BufferOffset, p.DesiredLength = be32(h[36:]), be32(h[40:]), be32(h[44:])
}

// nopOut (11.18).
type nopOut struct {
	immediateFlag
	segment
	LUN              uint64
	ITT, TTT         uint32
	CmdSN, ExpStatSN uint32
}

func (*nopOut) op() opcode { return opNOPOut }
func (p *nopOut) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}
func (p *nopOut) get(h *[bhsLen]byte) {
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.CmdSN, p.ExpStatSN = be32(h[24:]), be32(h[28:])
}

// nopIn (11.19).
type nopIn struct {
	notImmediate
	segment
	LUN                        uint64
	ITT, TTT                   uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
}

func (*nopIn) op() opcode { return opNOPIn }
func (p *nopIn) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.TTT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
}
func (p *nopIn) get(h *[bhsLen]byte) {
	p.LUN, p.ITT, p.TTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
}

// logoutRequest (11.14).
type logoutRequest struct {
	immediateFlag
	segment
	Reason           uint8
	ITT              uint32
	CID              uint16
	CmdSN, ExpStatSN uint32
}

func (*logoutRequest) op() opcode { return opLogout }
func (p *logoutRequest) put(h *[bhsLen]byte) {
	h[1] = flagFinal | p.Reason&0x7f
	put32(h[16:], p.ITT)
	put16(h[20:], p.CID)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
}
func (p *logoutRequest) get(h *[bhsLen]byte) {
	p.Reason = h[1] & 0x7f
	p.ITT, p.CID = be32(h[16:]), be16(h[20:])
	p.CmdSN, p.ExpStatSN = be32(h[24:]), be32(h[28:])
}

// logoutResponse (11.15).
type logoutResponse struct {
	notImmediate
	segment
	Response                   uint8
	ITT                        uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
	Time2Wait, Time2Retain     uint16
}

func (*logoutResponse) op() opcode { return opLogoutResp }
func (p *logoutResponse) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	h[2] = p.Response
	put32(h[16:], p.ITT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put16(h[40:], p.Time2Wait)
	put16(h[42:], p.Time2Retain)
}
func (p *logoutResponse) get(h *[bhsLen]byte) {
	p.Response = h[2]
	p.ITT = be32(h[16:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.Time2Wait, p.Time2Retain = be16(h[40:]), be16(h[42:])
}

// A task management function and response (11.5, 11.6). The session
// sends no task management requests (see abandon); the codec has them for
// completeness.
const (
	tmfAbortTask = 1
	tmfNoTask    = 1 // response: the referenced task does not exist
)

// taskMgmtRequest (11.5).
type taskMgmtRequest struct {
	immediateFlag
	segment
	Function          uint8
	LUN               uint64
	ITT, ReferencedTT uint32
	CmdSN, ExpStatSN  uint32
	RefCmdSN          uint32
	ExpDataSN         uint32
}

func (*taskMgmtRequest) op() opcode { return opTaskMgmt }
func (p *taskMgmtRequest) put(h *[bhsLen]byte) {
	h[1] = flagFinal | p.Function&0x7f
	put64(h[8:], p.LUN)
	put32(h[16:], p.ITT)
	put32(h[20:], p.ReferencedTT)
	put32(h[24:], p.CmdSN)
	put32(h[28:], p.ExpStatSN)
	put32(h[32:], p.RefCmdSN)
	put32(h[36:], p.ExpDataSN)
}
func (p *taskMgmtRequest) get(h *[bhsLen]byte) {
	p.Function = h[1] & 0x7f
	p.LUN, p.ITT, p.ReferencedTT = be64(h[8:]), be32(h[16:]), be32(h[20:])
	p.CmdSN, p.ExpStatSN = be32(h[24:]), be32(h[28:])
	p.RefCmdSN, p.ExpDataSN = be32(h[32:]), be32(h[36:])
}

// taskMgmtResponse (11.6).
type taskMgmtResponse struct {
	notImmediate
	segment
	Response                   uint8
	ITT                        uint32
	StatSN, ExpCmdSN, MaxCmdSN uint32
}

func (*taskMgmtResponse) op() opcode { return opTaskMgmtResp }
func (p *taskMgmtResponse) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	h[2] = p.Response
	put32(h[16:], p.ITT)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
}
func (p *taskMgmtResponse) get(h *[bhsLen]byte) {
	p.Response = h[2]
	p.ITT = be32(h[16:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
}

// reject (11.17); its data segment is the rejected PDU's header.
type reject struct {
	notImmediate
	segment
	Reason                     uint8
	StatSN, ExpCmdSN, MaxCmdSN uint32
	DataSN                     uint32
}

func (*reject) op() opcode { return opReject }
func (p *reject) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	h[2] = p.Reason
	put32(h[16:], reservedTag)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	put32(h[36:], p.DataSN)
}
func (p *reject) get(h *[bhsLen]byte) {
	p.Reason = h[2]
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.DataSN = be32(h[36:])
}

// rejectedITT returns the Initiator Task Tag of the PDU a Reject returns,
// if its data holds a whole header.
func (p *reject) rejectedITT() (uint32, bool) {
	if len(p.Data) < bhsLen {
		return 0, false
	}
	return be32(p.Data[16:]), true
}

var rejectReasons = map[uint8]string{
	0x02: "data digest error", 0x03: "SNACK reject", 0x04: "protocol error",
	0x05: "command not supported", 0x06: "immediate command reject", 0x07: "task in progress",
	0x08: "invalid data ack", 0x09: "invalid PDU field", 0x0a: "long operation reject",
	0x0b: "negotiation reset", 0x0c: "waiting for logout",
}

// Asynchronous events (11.9).
const (
	asyncSCSI           = 0
	asyncLogoutRequest  = 1
	asyncDropConnection = 2
	asyncDropAll        = 3
)

// asyncMessage (11.9).
type asyncMessage struct {
	notImmediate
	segment
	LUN                        uint64
	StatSN, ExpCmdSN, MaxCmdSN uint32
	Event, VCode               uint8
	Param1, Param2, Param3     uint16
}

func (*asyncMessage) op() opcode { return opAsync }
func (p *asyncMessage) put(h *[bhsLen]byte) {
	h[1] = flagFinal
	put64(h[8:], p.LUN)
	put32(h[16:], reservedTag)
	putSNs(h, p.StatSN, p.ExpCmdSN, p.MaxCmdSN)
	h[36], h[37] = p.Event, p.VCode
	put16(h[38:], p.Param1)
	put16(h[40:], p.Param2)
	put16(h[42:], p.Param3)
}
func (p *asyncMessage) get(h *[bhsLen]byte) {
	p.LUN = be64(h[8:])
	p.StatSN, p.ExpCmdSN, p.MaxCmdSN = getSNs(h)
	p.Event, p.VCode = h[36], h[37]
	p.Param1, p.Param2, p.Param3 = be16(h[38:]), be16(h[40:]), be16(h[42:])
}

// newPDU returns an empty PDU of type op.
func newPDU(op opcode) (pdu, error) {
	switch op {
	case opNOPOut:
		return &nopOut{}, nil
	case opSCSICmd:
		return &scsiCommand{}, nil
	case opTaskMgmt:
		return &taskMgmtRequest{}, nil
	case opLogin:
		return &loginRequest{}, nil
	case opText:
		return &textRequest{}, nil
	case opDataOut:
		return &dataOut{}, nil
	case opLogout:
		return &logoutRequest{}, nil
	case opNOPIn:
		return &nopIn{}, nil
	case opSCSIResp:
		return &scsiResponse{}, nil
	case opTaskMgmtResp:
		return &taskMgmtResponse{}, nil
	case opLoginResp:
		return &loginResponse{}, nil
	case opTextResp:
		return &textResponse{}, nil
	case opDataIn:
		return &dataIn{}, nil
	case opLogoutResp:
		return &logoutResponse{}, nil
	case opR2T:
		return &readyToTransfer{}, nil
	case opAsync:
		return &asyncMessage{}, nil
	case opReject:
		return &reject{}, nil
	}
	return nil, fmt.Errorf("%w: unknown %v", errProtocol, op)
}

// errProtocol marks PDUs that break RFC 7143; a session that receives one
// cannot go on.
var errProtocol = errors.New("iSCSI protocol error")

// header returns p's BHS for a data segment of p.payload()'s length.
func header(p pdu) (h [bhsLen]byte) {
	h[0] = byte(p.op()) & 0x3f
	if p.immediate() {
		h[0] |= 0x40
	}
	p.put(&h)
	n := len(p.payload())
	h[5], h[6], h[7] = byte(n>>16), byte(n>>8), byte(n)
	return h
}

// pad returns the number of zero bytes that follow n bytes of data.
func pad(n int) int { return -n & 3 }

var zeros [4]byte

// encodePDU returns p as it goes on the wire.
func encodePDU(p pdu) []byte {
	h := header(p)
	data := p.payload()
	b := make([]byte, 0, bhsLen+len(data)+pad(len(data)))
	b = append(b, h[:]...)
	b = append(b, data...)
	return append(b, zeros[:pad(len(data))]...)
}

// headerInfo is what the framing fields of a BHS say.
type headerInfo struct {
	op       opcode
	ahsLen   int // bytes
	dataLen  int // bytes, without padding
	wireData int // bytes of AHS, data and padding that follow the BHS
}

func parseHeader(h *[bhsLen]byte) headerInfo {
	ahs := int(h[4]) * 4
	n := int(h[5])<<16 | int(h[6])<<8 | int(h[7])
	return headerInfo{op: opcode(h[0] & 0x3f), ahsLen: ahs, dataLen: n, wireData: ahs + n + pad(n)}
}

// decodeHeader returns the PDU a BHS describes, without its data.
func decodeHeader(h *[bhsLen]byte) (pdu, headerInfo, error) {
	info := parseHeader(h)
	p, err := newPDU(info.op)
	if err != nil {
		return nil, info, err
	}
	if f, ok := p.(interface{ setImmediate(bool) }); ok {
		f.setImmediate(h[0]&0x40 != 0)
	}
	p.get(h)
	return p, info, nil
}

func (f *immediateFlag) setImmediate(on bool) { f.Immediate = on }

// decodePDU decodes one whole PDU from the start of b and returns it and
// the number of bytes it took. The data segment is copied.
func decodePDU(b []byte) (pdu, int, error) {
	if len(b) < bhsLen {
		return nil, 0, fmt.Errorf("%w: %d bytes, less than a %d-byte header", errProtocol, len(b), bhsLen)
	}
	h := (*[bhsLen]byte)(b[:bhsLen])
	p, info, err := decodeHeader(h)
	if err != nil {
		return nil, 0, err
	}
	if len(b)-bhsLen < info.wireData {
		return nil, 0, fmt.Errorf("%w: %v says %d bytes of AHS and data follow, only %d do",
			errProtocol, info.op, info.wireData, len(b)-bhsLen)
	}
	if info.dataLen > 0 {
		start := bhsLen + info.ahsLen
		p.setPayload(append([]byte(nil), b[start:start+info.dataLen]...))
	}
	return p, bhsLen + info.wireData, nil
}

// readPDU reads one PDU from r. Its data segment goes to buf when it fits
// (the returned PDU's payload aliases buf then) and is refused when longer
// than maxData.
func readPDU(r io.Reader, buf []byte, maxData int) (pdu, error) {
	p, info, err := readHeader(r, maxData)
	if err != nil {
		return nil, err
	}
	return p, readData(r, p, info, buf)
}

// readHeader reads a BHS and skips the AHS that follow it.
func readHeader(r io.Reader, maxData int) (pdu, headerInfo, error) {
	var h [bhsLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, headerInfo{}, err
	}
	p, info, err := decodeHeader(&h)
	if err != nil {
		return nil, info, err
	}
	if info.dataLen > maxData {
		return nil, info, fmt.Errorf("%w: %v with a %d-byte data segment, more than the %d negotiated",
			errProtocol, info.op, info.dataLen, maxData)
	}
	if info.ahsLen > 0 {
		if err := discard(r, info.ahsLen); err != nil {
			return nil, info, err
		}
	}
	return p, info, nil
}

// readData reads the data segment readHeader left, into buf if it fits.
func readData(r io.Reader, p pdu, info headerInfo, buf []byte) error {
	if info.dataLen == 0 {
		return nil
	}
	n := info.dataLen + pad(info.dataLen)
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		return noEOF(err)
	}
	p.setPayload(buf[:info.dataLen])
	return nil
}

// discard reads and drops n bytes.
func discard(r io.Reader, n int) error {
	if n == 0 {
		return nil
	}
	_, err := io.CopyN(io.Discard, r, int64(n))
	return noEOF(err)
}

// noEOF turns an EOF in the middle of a PDU into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// textKV is one key=value pair of a text data segment (RFC 7143 6.1).
type textKV struct{ Key, Value string }

// maxKeyLen is the longest key name RFC 7143 6.1 allows.
const maxKeyLen = 63

// parseText parses NUL-terminated key=value pairs, keeping their order and
// repeated keys (SendTargets answers repeat TargetName and TargetAddress).
// Empty entries (padding) are skipped; a missing final NUL is tolerated.
func parseText(b []byte) ([]textKV, error) {
	var kvs []textKV
	for len(b) > 0 {
		item := b
		if i := bytes.IndexByte(b, 0); i >= 0 {
			item, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(item) == 0 {
			continue
		}
		eq := bytes.IndexByte(item, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("%w: text %q is not key=value", errProtocol, truncate(string(item)))
		}
		key := string(item[:eq])
		if len(key) > maxKeyLen {
			return nil, fmt.Errorf("%w: text key %q longer than %d bytes", errProtocol, truncate(key), maxKeyLen)
		}
		for _, c := range []byte(key) {
			if c <= ' ' || c > '~' {
				return nil, fmt.Errorf("%w: text key %q has byte 0x%02x", errProtocol, truncate(key), c)
			}
		}
		kvs = append(kvs, textKV{key, string(item[eq+1:])})
	}
	return kvs, nil
}

// encodeText is parseText's inverse.
func encodeText(kvs []textKV) []byte {
	var b []byte
	for _, kv := range kvs {
		b = append(b, kv.Key...)
		b = append(b, '=')
		b = append(b, kv.Value...)
		b = append(b, 0)
	}
	return b
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// lookup returns the value of the first key in kvs.
func lookup(kvs []textKV, key string) (string, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return "", false
}

// lunField encodes LUN number lun as the 8-byte SAM LUN of the BHS (SAM-5
// 4.7): peripheral addressing below 256, flat addressing up to 16383.
func lunField(lun uint64) (uint64, error) {
	switch {
	case lun < 256:
		return lun << 48, nil
	case lun < 1<<14:
		return (0x4000 | lun) << 48, nil
	}
	return 0, fmt.Errorf("LUN %d is above 16383, which single-level LUN addressing can say", lun)
}
