package iscsi

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// samplePDUs has one PDU of every type with every field set.
func samplePDUs() []pdu {
	data := []byte("some data, not a multiple of four")
	return []pdu{
		&loginRequest{Transit: true, CSG: 1, NSG: 3, VersionMax: 0, ISID: [6]byte{0x80, 1, 2, 3, 4, 5}, TSIH: 7,
			ITT: 9, CID: 1, CmdSN: 11, ExpStatSN: 12, segment: segment{encodeText([]textKV{{"InitiatorName", "iqn.x"}})}},
		&loginResponse{Continue: true, CSG: 0, NSG: 1, VersionMax: 0, ISID: [6]byte{0x80}, TSIH: 1, ITT: 9,
			StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3, StatusClass: 2, StatusDetail: 1},
		&textRequest{immediateFlag: immediateFlag{true}, Final: true, LUN: 1 << 48, ITT: 1, TTT: reservedTag, CmdSN: 4, ExpStatSN: 5,
			segment: segment{encodeText([]textKV{{"SendTargets", "All"}})}},
		&textResponse{Continue: true, ITT: 1, TTT: 77, StatSN: 5, ExpCmdSN: 6, MaxCmdSN: 70, segment: segment{data}},
		&scsiCommand{Final: true, Read: true, Attr: 1, LUN: 1 << 48, ITT: 0x101, ExpectedLength: 262144, CmdSN: 8,
			ExpStatSN: 9, CDB: rwCDB(opRead16, 1<<40, 512)},
		&scsiCommand{Final: false, Write: true, Attr: 2, LUN: 0x4100 << 48, ITT: 0x102, ExpectedLength: 1 << 20,
			CmdSN: 9, ExpStatSN: 9, CDB: rwCDB(opWrite16, 8, 2048), segment: segment{data}},
		&scsiResponse{Underflow: true, BidiOverflow: true, Response: 0, Status: 2, ITT: 0x101, SNACKTag: 3, StatSN: 10,
			ExpCmdSN: 11, MaxCmdSN: 12, ExpDataSN: 13, BidiResidual: 14, Residual: 15, segment: segment{data}},
		&dataIn{Final: true, Ack: true, Underflow: true, HasStatus: true, Status: 0, LUN: 1 << 48, ITT: 0x101,
			TTT: reservedTag, StatSN: 10, ExpCmdSN: 11, MaxCmdSN: 12, DataSN: 3, BufferOffset: 8192, Residual: 512,
			segment: segment{data}},
		&dataOut{Final: true, LUN: 1 << 48, ITT: 0x102, TTT: 5, ExpStatSN: 9, DataSN: 2, BufferOffset: 65536, segment: segment{data}},
		&readyToTransfer{LUN: 1 << 48, ITT: 0x102, TTT: 5, StatSN: 10, ExpCmdSN: 11, MaxCmdSN: 12, R2TSN: 1,
			BufferOffset: 65536, DesiredLength: 196608},
		&nopOut{immediateFlag: immediateFlag{true}, LUN: 0, ITT: reservedTag, TTT: 6, CmdSN: 9, ExpStatSN: 10, segment: segment{data}},
		&nopIn{ITT: reservedTag, TTT: 6, StatSN: 10, ExpCmdSN: 11, MaxCmdSN: 12, segment: segment{data}},
		&logoutRequest{immediateFlag: immediateFlag{true}, Reason: 0, ITT: 0x103, CID: 1, CmdSN: 12, ExpStatSN: 13},
		&logoutResponse{Response: 0, ITT: 0x103, StatSN: 13, ExpCmdSN: 13, MaxCmdSN: 140, Time2Wait: 2, Time2Retain: 20},
		&taskMgmtRequest{immediateFlag: immediateFlag{true}, Function: tmfAbortTask, LUN: 1 << 48, ITT: 0x104,
			ReferencedTT: 0x102, CmdSN: 12, ExpStatSN: 13, RefCmdSN: 9, ExpDataSN: 0},
		&taskMgmtResponse{Response: tmfNoTask, ITT: 0x104, StatSN: 14, ExpCmdSN: 13, MaxCmdSN: 140},
		&reject{Reason: 0x09, StatSN: 15, ExpCmdSN: 13, MaxCmdSN: 140, DataSN: 0, segment: segment{make([]byte, bhsLen)}},
		&asyncMessage{LUN: 1 << 48, StatSN: 16, ExpCmdSN: 13, MaxCmdSN: 140, Event: asyncLogoutRequest, Param3: 5},
	}
}

func TestPDURoundTrip(t *testing.T) {
	for _, p := range samplePDUs() {
		b := encodePDU(p)
		if len(b)%4 != 0 {
			t.Errorf("%v: %d bytes, not a multiple of 4", p.op(), len(b))
		}
		got, n, err := decodePDU(b)
		if err != nil || n != len(b) {
			t.Fatalf("decode %v: %d of %d bytes, %v", p.op(), n, len(b), err)
		}
		if diff := cmp.Diff(p, got, cmp.Exporter(func(reflect.Type) bool { return true })); diff != "" {
			t.Errorf("%v round trip (-sent +decoded):\n%s", p.op(), diff)
		}
		// The reader's path gives the same.
		got2, err := readPDU(bytes.NewReader(b), nil, maxDataSegment)
		if err != nil || !reflect.DeepEqual(got, got2) {
			t.Errorf("readPDU %v = %+v, %v; decodePDU gave %+v", p.op(), got2, err, got)
		}
	}
}

func TestHeaderLayout(t *testing.T) {
	// A few fields at the offsets RFC 7143 puts them.
	h := header(&scsiCommand{Final: true, Read: true, Attr: 1, LUN: 1 << 48, ITT: 0xaabbccdd, ExpectedLength: 4096,
		CmdSN: 0x11223344, ExpStatSN: 0x55667788, CDB: rwCDB(opRead16, 2, 8), segment: segment{make([]byte, 5)}})
	for _, c := range []struct {
		off  int
		want []byte
	}{
		{0, []byte{0x01, 0xc1}},
		{4, []byte{0, 0, 0, 5}},
		{8, []byte{0, 1, 0, 0, 0, 0, 0, 0}},
		{16, []byte{0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0x10, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88}},
		{32, []byte{opRead16, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 8, 0, 0}},
	} {
		if got := h[c.off : c.off+len(c.want)]; !bytes.Equal(got, c.want) {
			t.Errorf("SCSI Command bytes %d..: % x, want % x", c.off, got, c.want)
		}
	}
	l := header(&loginRequest{Transit: true, CSG: 1, NSG: 3, ISID: [6]byte{0x80, 0, 0, 1, 0, 2}, TSIH: 0x0102})
	if l[0] != 0x43 || l[1] != 0x87 || !bytes.Equal(l[8:16], []byte{0x80, 0, 0, 1, 0, 2, 1, 2}) {
		t.Errorf("Login Request header % x", l[:16])
	}
}

func TestDecodeErrors(t *testing.T) {
	good := encodePDU(&nopIn{ITT: 1, TTT: reservedTag, segment: segment{[]byte("12345")}})
	unknown := bytes.Clone(good)
	unknown[0] = 0x1c // a vendor opcode
	for name, b := range map[string][]byte{
		"short header":   good[:47],
		"short data":     good[:len(good)-4],
		"unknown opcode": unknown,
	} {
		if _, _, err := decodePDU(b); !errors.Is(err, errProtocol) {
			t.Errorf("%s: %v, want a protocol error", name, err)
		}
	}
	if _, err := readPDU(bytes.NewReader(good), nil, 4); !errors.Is(err, errProtocol) {
		t.Errorf("readPDU over the limit: %v", err)
	}
	if _, err := readPDU(bytes.NewReader(good[:52]), nil, 100); err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("readPDU of a cut PDU: %v, want unexpected EOF", err)
	}
}

func TestParseText(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []textKV
		bad  bool
	}{
		{in: "", want: nil},
		{in: "A=1\x00", want: []textKV{{"A", "1"}}},
		{in: "A=1\x00B=\x00\x00\x00", want: []textKV{{"A", "1"}, {"B", ""}}},
		{in: "A=1", want: []textKV{{"A", "1"}}},
		{in: "TargetName=t1\x00TargetAddress=1.2.3.4:3260,1\x00TargetName=t2\x00", want: []textKV{
			{"TargetName", "t1"}, {"TargetAddress", "1.2.3.4:3260,1"}, {"TargetName", "t2"}}},
		{in: "CHAP_C=0xab=cd\x00", want: []textKV{{"CHAP_C", "0xab=cd"}}},
		{in: "noequals\x00", bad: true},
		{in: "=value\x00", bad: true},
		{in: strings.Repeat("K", 64) + "=v\x00", bad: true},
		{in: "K EY=v\x00", bad: true},
	} {
		got, err := parseText([]byte(c.in))
		if c.bad {
			if !errors.Is(err, errProtocol) {
				t.Errorf("parseText(%q) = %v, %v; want a protocol error", c.in, got, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseText(%q): %v", c.in, err)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("parseText(%q) (-want +got):\n%s", c.in, diff)
		}
	}
}

func TestSendTargets(t *testing.T) {
	kvs, _ := parseText([]byte("TargetName=iqn.a\x00TargetAddress=10.0.0.1:3261,1\x00TargetAddress=[fe80::1]:3260,2\x00" +
		"TargetName=iqn.b\x00TargetName=iqn.c\x00TargetAddress=10.0.0.2,1\x00"))
	got, err := parseSendTargets(kvs, "192.0.2.1:3260")
	if err != nil {
		t.Fatal(err)
	}
	want := []DiscoveredTarget{
		{Name: "iqn.a", Portals: []string{"10.0.0.1:3261", "[fe80::1]:3260"}},
		{Name: "iqn.b", Portals: []string{"192.0.2.1:3260"}},
		{Name: "iqn.c", Portals: []string{"10.0.0.2:3260"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseSendTargets (-want +got):\n%s", diff)
	}
	if _, err := parseSendTargets([]textKV{{"TargetAddress", "x"}}, "p"); err == nil {
		t.Error("TargetAddress before TargetName accepted")
	}
}

func TestLUNField(t *testing.T) {
	for lun, want := range map[uint64]uint64{0: 0, 1: 1 << 48, 255: 255 << 48, 256: 0x4100 << 48, 16383: 0x7fff << 48} {
		if got, err := lunField(lun); err != nil || got != want {
			t.Errorf("lunField(%d) = %#x, %v; want %#x", lun, got, err, want)
		}
	}
	if _, err := lunField(16384); err == nil {
		t.Error("lunField(16384) succeeded")
	}
}

func TestParseSense(t *testing.T) {
	fixed := make([]byte, 2+18)
	fixed[1] = 18
	fixed[2], fixed[4], fixed[2+12], fixed[2+13] = 0x70, 0x07, 0x27, 0x00
	desc := []byte{0, 8, 0x72, 0x06, 0x29, 0x01, 0, 0, 0, 0}
	for _, c := range []struct {
		name string
		in   []byte
		want Sense
		ok   bool
	}{
		{"fixed", fixed, Sense{SenseDataProtect, 0x27, 0}, true},
		{"descriptor", desc, Sense{SenseUnitAttention, 0x29, 1}, true},
		{"empty", []byte{0, 0}, Sense{}, false},
		{"length beyond data", []byte{0xff, 0xff, 0x70, 0, 5}, Sense{Key: 5}, true},
		{"unknown format", []byte{0, 3, 0x10, 1, 2}, Sense{}, false},
	} {
		got, ok := parseSense(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: parseSense = %v, %v; want %v, %v", c.name, got, ok, c.want, c.ok)
		}
	}
	if s := (Sense{SenseDataProtect, 0x27, 0}).String(); !strings.Contains(s, "DATA PROTECT (0x7)") || !strings.Contains(s, "write protected") {
		t.Errorf("Sense.String() = %q", s)
	}
}

func TestNegotiate(t *testing.T) {
	for _, c := range []struct {
		key, ours, theirs, want string
		bad                     bool
	}{
		{key: "MaxBurstLength", ours: "16776192", theirs: "262144", want: "262144"},
		{key: "MaxBurstLength", ours: "4096", theirs: "262144", want: "4096"},
		{key: "DefaultTime2Wait", ours: "0", theirs: "2", want: "2"},
		{key: "InitialR2T", ours: "No", theirs: "Yes", want: "Yes"},
		{key: "InitialR2T", ours: "No", theirs: "No", want: "No"},
		{key: "ImmediateData", ours: "Yes", theirs: "No", want: "No"},
		{key: "HeaderDigest", ours: "None", theirs: "None", want: "None"},
		{key: "HeaderDigest", ours: "None", theirs: "CRC32C", bad: true},
		{key: "MaxBurstLength", ours: "4096", theirs: "lots", bad: true},
		{key: "ImmediateData", ours: "Yes", theirs: "Maybe", bad: true},
	} {
		got, err := negotiate(c.key, c.ours, c.theirs)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("negotiate(%s, %s, %s) = %q, %v", c.key, c.ours, c.theirs, got, err)
		}
	}
	var p params
	for _, kv := range [][2]string{{"DataDigest", "CRC32C"}, {"MaxConnections", "2"}, {"ErrorRecoveryLevel", "1"},
		{"MaxRecvDataSegmentLength", "100"}, {"DataPDUInOrder", "No"}, {"MaxOutstandingR2T", "0"}} {
		if err := p.apply(kv[0], kv[1]); err == nil {
			t.Errorf("apply(%s=%s) accepted", kv[0], kv[1])
		}
	}
}

func TestDecodeBinary(t *testing.T) {
	for in, want := range map[string]string{"0x00ff": "\x00\xff", "0XaB": "\xab", "0x123": "\x01\x23", "0bAP8=": "\x00\xff"} {
		got, err := decodeBinary(in)
		if err != nil || string(got) != want {
			t.Errorf("decodeBinary(%q) = %x, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0x", "ff", "0xzz", "0b!!", "0c12"} {
		if _, err := decodeBinary(in); err == nil {
			t.Errorf("decodeBinary(%q) succeeded", in)
		}
	}
}

// realPDUs are the PDUs a session with tgtd exchanged, recorded by
// TestRecordPDUs (-record-pdus) into the fuzz corpus.
func realPDUs(t testing.TB) map[string][]byte {
	t.Helper()
	files, _ := filepath.Glob("testdata/fuzz/FuzzDecodePDU/real-*")
	if len(files) == 0 {
		t.Fatal("no recorded PDUs in testdata/fuzz/FuzzDecodePDU; record them with go test -run TestRecordPDUs -record-pdus (as root)")
	}
	pdus := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(b), "\n", 3)
		if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
			t.Fatalf("%s: not a fuzz corpus file", f)
		}
		s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		pdus[filepath.Base(f)] = []byte(s)
	}
	return pdus
}

// TestRealPDUs decodes what tgtd and this initiator really sent and
// encodes it back to the same bytes.
func TestRealPDUs(t *testing.T) {
	ops := map[opcode]bool{}
	for name, b := range realPDUs(t) {
		p, n, err := decodePDU(b)
		if err != nil || n != len(b) {
			t.Errorf("%s: decode: %d of %d bytes, %v", name, n, len(b), err)
			continue
		}
		ops[p.op()] = true
		if got := encodePDU(p); !bytes.Equal(got, b) {
			t.Errorf("%s: encode(decode(x)) != x:\n got % x\nwant % x", name, got, b)
		}
		if p.op() == opLogin || p.op() == opLoginResp || p.op() == opText || p.op() == opTextResp {
			if _, err := parseText(p.payload()); err != nil {
				t.Errorf("%s: text: %v", name, err)
			}
		}
	}
	for _, op := range []opcode{opLogin, opLoginResp, opText, opTextResp, opSCSICmd, opSCSIResp, opDataIn,
		opDataOut, opR2T, opLogout, opLogoutResp} {
		if !ops[op] {
			t.Errorf("no recorded %v", op)
		}
	}
}

// FuzzDecodePDU feeds the decoders arbitrary bytes: nothing may panic, a
// decoded PDU must encode to bytes that decode to the same PDU, and parsed
// text must survive encoding and parsing again.
func FuzzDecodePDU(f *testing.F) {
	for _, p := range samplePDUs() {
		f.Add(encodePDU(p))
	}
	f.Add([]byte("TargetName=iqn.a\x00TargetAddress=10.0.0.1:3260,1\x00"))
	f.Add([]byte("CHAP_A=5\x00CHAP_I=7\x00CHAP_C=0x0123456789abcdef\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, n, err := decodePDU(b); err == nil {
			if n < bhsLen || n > len(b) {
				t.Fatalf("decodePDU took %d of %d bytes", n, len(b))
			}
			enc := encodePDU(p)
			p2, n2, err := decodePDU(enc)
			if err != nil || n2 != len(enc) {
				t.Fatalf("decoding the encoded %v: %d of %d bytes, %v", p.op(), n2, len(enc), err)
			}
			if !reflect.DeepEqual(p, p2) {
				t.Fatalf("%v changed in a round trip:\n%+v\n%+v", p.op(), p, p2)
			}
			if !bytes.Equal(encodePDU(p2), enc) {
				t.Fatalf("%v encodes differently the second time", p.op())
			}
			q, err := readPDU(bytes.NewReader(b), nil, maxDataSegment)
			if err != nil || !reflect.DeepEqual(p, q) {
				t.Fatalf("readPDU = %+v, %v; decodePDU = %+v", q, err, p)
			}
			if rj, ok := p.(*reject); ok {
				rj.rejectedITT()
			}
		} else if !errors.Is(err, errProtocol) {
			t.Fatalf("decodePDU error %v is not a protocol error", err)
		}

		kvs, err := parseText(b)
		if err == nil {
			again, err := parseText(encodeText(kvs))
			if err != nil || !reflect.DeepEqual(kvs, again) {
				t.Fatalf("text %q changed in a round trip: %q, %v", kvs, again, err)
			}
			parseSendTargets(kvs, "192.0.2.1:3260")
			for _, kv := range kvs {
				if _, ok := keyRules[kv.Key]; ok {
					negotiate(kv.Key, kv.Value, kv.Value)
					var p params
					p.apply(kv.Key, kv.Value)
				}
			}
		} else if !errors.Is(err, errProtocol) {
			t.Fatalf("parseText error %v is not a protocol error", err)
		}
		parseSense(b)
		decodeBinary(string(b))
	})
}
