package iscsi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// These tests use a scripted fake target for what tgt never does: a CmdSN
// window of one, Data-In without status followed by a SCSI Response,
// NOP-In pings, login text split with the Continue bit, keys the target
// proposes on its own, Reject and asynchronous logout requests, and a
// target that skips authentication when mutual CHAP is asked for. The same
// behaviours that tgt does show are tested against tgtd.

type fakeTarget struct {
	t        *testing.T
	conn     net.Conn
	statSN   uint32
	expCmdSN uint32
	window   uint32 // MaxCmdSN = ExpCmdSN + window - 1
}

// listenFake accepts one connection and runs serve on it.
func listenFake(t *testing.T, serve func(f *fakeTarget)) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		serve(&fakeTarget{t: t, conn: conn, expCmdSN: 1, window: 1})
	}()
	return l.Addr().String()
}

func (f *fakeTarget) maxCmdSN() uint32 { return f.expCmdSN + f.window - 1 }

func (f *fakeTarget) read() pdu {
	f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	p, err := readPDU(f.conn, nil, 1<<20)
	if err != nil {
		f.t.Errorf("fake target: read: %v", err)
		return nil
	}
	if c, ok := p.(*scsiCommand); ok {
		if int32(c.CmdSN-f.maxCmdSN()) > 0 {
			f.t.Errorf("fake target: command with CmdSN %d beyond MaxCmdSN %d", c.CmdSN, f.maxCmdSN())
		}
		f.expCmdSN = c.CmdSN + 1
	}
	return p
}

// quiet reports whether the initiator sends nothing for a while.
func (f *fakeTarget) quiet() bool {
	f.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var b [1]byte
	_, err := f.conn.Read(b[:])
	return err != nil
}

// drain reads until the initiator closes the connection.
func (f *fakeTarget) drain() {
	f.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, f.conn)
}

func (f *fakeTarget) send(p pdu) {
	if _, err := f.conn.Write(encodePDU(p)); err != nil {
		f.t.Errorf("fake target: write: %v", err)
	}
}

func (f *fakeTarget) nextStatSN() uint32 {
	f.statSN++
	return f.statSN - 1
}

// login answers a login without authentication. The security answer is
// split over two responses (Continue), and the operational answer
// proposes IFMarker, which the initiator did not offer and must answer.
func (f *fakeTarget) login(overrides ...textKV) bool {
	req, ok := f.read().(*loginRequest)
	if !ok || req.CSG != stageSecurity || !req.Transit {
		f.t.Errorf("fake target: first login request %+v", req)
		return false
	}
	kvs, _ := parseText(req.Data)
	if m, _ := lookup(kvs, "AuthMethod"); m != "None" {
		f.t.Errorf("fake target: AuthMethod=%q", m)
	}
	text := encodeText([]textKV{{"AuthMethod", "None"}, {"TargetPortalGroupTag", "1"}})
	f.send(&loginResponse{Continue: true, CSG: stageSecurity, ITT: req.ITT, TSIH: 0, StatSN: f.nextStatSN(),
		ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN(), segment: segment{text[:5]}})
	if more, ok := f.read().(*loginRequest); !ok || len(more.Data) != 0 || more.Transit {
		f.t.Errorf("fake target: continuation request %+v", more)
		return false
	}
	f.send(&loginResponse{Transit: true, CSG: stageSecurity, NSG: stageOperational, ITT: req.ITT, StatSN: f.nextStatSN(),
		ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN(), segment: segment{text[5:]}})

	op, ok := f.read().(*loginRequest)
	if !ok || op.CSG != stageOperational || op.NSG != stageFullFeature {
		f.t.Errorf("fake target: operational request %+v", op)
		return false
	}
	answer := []textKV{{"HeaderDigest", "None"}, {"DataDigest", "None"}, {"MaxRecvDataSegmentLength", "4096"},
		{"MaxConnections", "1"}, {"InitialR2T", "Yes"}, {"ImmediateData", "No"}, {"MaxBurstLength", "65536"},
		{"FirstBurstLength", "8192"}, {"DefaultTime2Wait", "2"}, {"DefaultTime2Retain", "0"},
		{"MaxOutstandingR2T", "2"}, {"DataPDUInOrder", "Yes"}, {"DataSequenceInOrder", "Yes"},
		{"ErrorRecoveryLevel", "0"}, {"IFMarker", "No"}}
	for _, o := range overrides {
		for i := range answer {
			if answer[i].Key == o.Key {
				answer[i].Value = o.Value
			}
		}
	}
	f.send(&loginResponse{CSG: stageOperational, ITT: op.ITT, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN,
		MaxCmdSN: f.maxCmdSN(), segment: segment{encodeText(answer)}})
	op2, ok := f.read().(*loginRequest)
	if !ok {
		f.t.Errorf("fake target: second operational request %+v", op2)
		return false
	}
	kvs, _ = parseText(op2.Data)
	if v, _ := lookup(kvs, "IFMarker"); v != "No" {
		f.t.Errorf("fake target: IFMarker answered %q, want No", v)
	}
	f.send(&loginResponse{Transit: true, CSG: stageOperational, NSG: stageFullFeature, ITT: op2.ITT, TSIH: 5,
		StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
	return true
}

// fakeBlock is the content of block lba on the fake LUN.
func fakeBlock(lba uint64) []byte {
	b := bytes.Repeat([]byte{byte(lba)}, 512)
	binary.BigEndian.PutUint64(b, lba)
	return b
}

// serveRead answers READ CAPACITY and READ(16) commands: Data-In PDUs of
// 4096 bytes without status, then a SCSI Response.
func (f *fakeTarget) serveSCSI(c *scsiCommand) {
	var data []byte
	switch c.CDB[0] {
	case opReadCapacity16:
		data = make([]byte, 32)
		binary.BigEndian.PutUint64(data, 2047) // 1 MiB
		binary.BigEndian.PutUint32(data[8:], 512)
	case opRead16:
		lba, n := be64(c.CDB[2:]), be32(c.CDB[10:])
		for i := range uint64(n) {
			data = append(data, fakeBlock(lba+i)...)
		}
	default:
		f.t.Errorf("fake target: unexpected %s", cdbName(c.CDB))
		return
	}
	for off, sn := 0, uint32(0); off < len(data); sn++ {
		n := min(4096, len(data)-off)
		f.send(&dataIn{LUN: c.LUN, ITT: c.ITT, TTT: reservedTag, ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN(),
			DataSN: sn, BufferOffset: uint32(off), segment: segment{data[off : off+n]}, Final: off+n == len(data)})
		off += n
	}
	f.send(&scsiResponse{ITT: c.ITT, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
}

func fakeConfig(portal string) Config {
	return Config{Portal: portal, TargetIQN: "iqn.2026-11.io.bulkhead:fake", InitiatorIQN: "iqn.2026-11.io.bulkhead:test",
		Timeout: 10 * time.Second}
}

func TestFakeTargetWindowAndPings(t *testing.T) {
	portal := listenFake(t, func(f *fakeTarget) {
		if !f.login() {
			return
		}
		commands := 0
		for {
			p := f.read()
			switch p := p.(type) {
			case *scsiCommand:
				commands++
				// With a window of one, nothing may follow until answered.
				if !f.quiet() {
					f.t.Errorf("fake target: initiator sent more while the CmdSN window was closed")
				}
				if commands == 3 {
					// Ping, saying the window is closed (MaxCmdSN =
					// ExpCmdSN-1): the initiator must answer, and send
					// nothing else.
					f.send(&nopIn{ITT: reservedTag, TTT: 0x1234, StatSN: f.statSN, ExpCmdSN: f.expCmdSN,
						MaxCmdSN: f.expCmdSN - 1, segment: segment{[]byte("ping")}})
					reply, ok := f.read().(*nopOut)
					if !ok || reply.TTT != 0x1234 || reply.ITT != reservedTag || !reply.Immediate || string(reply.Data) != "ping" {
						f.t.Errorf("fake target: answer to NOP-In: %+v", reply)
					}
				}
				f.serveSCSI(p)
			case *logoutRequest:
				f.send(&logoutResponse{ITT: p.ITT, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
				return
			default:
				if p != nil {
					f.t.Errorf("fake target: unexpected %v", p.op())
				}
				return
			}
		}
	})
	s, err := Dial(t.Context(), fakeConfig(portal))
	if err != nil {
		t.Fatal(err)
	}
	if p := s.Params(); p.TargetMaxRecvDataSegmentLength != 4096 || p.MaxBurstLength != 65536 || p.ImmediateData || p.MaxOutstandingR2T != 2 {
		t.Errorf("negotiated %+v", p)
	}
	p := make([]byte, 256<<10) // 4 commands of MaxBurstLength, sent one by one
	if _, err := s.ReadAt(t.Context(), 1, p, 512*100); err != nil {
		t.Fatal(err)
	}
	for i := range len(p) / 512 {
		if !bytes.Equal(p[i*512:(i+1)*512], fakeBlock(uint64(100+i))) {
			t.Fatalf("block %d wrong", 100+i)
		}
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestFakeTargetRejectAndLogoutRequest(t *testing.T) {
	portal := listenFake(t, func(f *fakeTarget) {
		f.window = 8
		if !f.login() {
			return
		}
		c, ok := f.read().(*scsiCommand)
		if !ok {
			return
		}
		h := header(c)
		f.send(&reject{Reason: 0x09, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN(), segment: segment{h[:]}})
		if _, ok := f.read().(*scsiCommand); !ok {
			return
		}
		f.send(&asyncMessage{Event: asyncLogoutRequest, Param3: 3, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
		f.drain()
	})
	s, err := Dial(t.Context(), fakeConfig(portal))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	_, _, err = s.ReadCapacity(t.Context(), 1)
	if err == nil || !strings.Contains(err.Error(), "target rejected READ CAPACITY(16) LUN 1: invalid PDU field (0x09)") {
		t.Errorf("rejected command: %v", err)
	}
	_, _, err = s.ReadCapacity(t.Context(), 1)
	if !errors.Is(err, ErrSessionBroken) || !strings.Contains(err.Error(), "target asked to log out") {
		t.Errorf("command answered by a logout request: %v", err)
	}
}

func TestFakeTargetSkipsMutualCHAP(t *testing.T) {
	portal := listenFake(t, func(f *fakeTarget) {
		req, ok := f.read().(*loginRequest)
		if !ok {
			return
		}
		kvs, _ := parseText(req.Data)
		if m, _ := lookup(kvs, "AuthMethod"); m != "CHAP" {
			f.t.Errorf("fake target: mutual CHAP offered AuthMethod=%q, want CHAP alone", m)
		}
		// Not what was offered, and no proof of the target's identity.
		f.send(&loginResponse{CSG: stageSecurity, ITT: req.ITT, StatSN: f.nextStatSN(), ExpCmdSN: 1, MaxCmdSN: 1,
			segment: segment{encodeText([]textKV{{"AuthMethod", "None"}})}})
		f.drain()
	})
	cfg := fakeConfig(portal)
	cfg.CHAPUser, cfg.CHAPSecret, cfg.MutualUser, cfg.MutualSecret = "u", "secret-of-u1", "t", "secret-of-t1"
	_, err := Dial(t.Context(), cfg)
	if !errors.Is(err, errdefs.ErrUnauthenticated) || !strings.Contains(err.Error(), "mutual CHAP") {
		t.Errorf("Dial: %v; want a refusal for mutual CHAP", err)
	}
}

// TestFakeTargetWriteSequences checks the data a write sends: immediate
// data up to the target's MaxRecvDataSegmentLength, unsolicited Data-Out up
// to FirstBurstLength (InitialR2T=No), then two R2Ts outstanding at once
// (MaxOutstandingR2T=2), each answered by its own Data-Out sequence.
func TestFakeTargetWriteSequences(t *testing.T) {
	const size = 64 << 10
	got := make([]byte, size)
	portal := listenFake(t, func(f *fakeTarget) {
		f.window = 8
		if !f.login(textKV{"InitialR2T", "No"}, textKV{"ImmediateData", "Yes"}) {
			return
		}
		c, ok := f.read().(*scsiCommand)
		if !ok || !c.Write || c.Final || c.ExpectedLength != size || len(c.Data) != 4096 {
			f.t.Errorf("fake target: write command %+v with %d bytes", c, len(c.Data))
			return
		}
		copy(got, c.Data)
		// Unsolicited Data-Out up to FirstBurstLength (8192).
		d, ok := f.read().(*dataOut)
		if !ok || d.TTT != reservedTag || d.DataSN != 0 || d.BufferOffset != 4096 || len(d.Data) != 4096 || !d.Final {
			f.t.Errorf("fake target: unsolicited Data-Out %+v", d)
			return
		}
		copy(got[4096:], d.Data)
		r2ts := []*readyToTransfer{
			{ITT: c.ITT, TTT: 100, R2TSN: 0, BufferOffset: 8192, DesiredLength: 20480},
			{ITT: c.ITT, TTT: 101, R2TSN: 1, BufferOffset: 28672, DesiredLength: size - 28672},
		}
		for _, r := range r2ts {
			r.StatSN, r.ExpCmdSN, r.MaxCmdSN = f.statSN, f.expCmdSN, f.maxCmdSN()
			f.send(r)
		}
		for _, r := range r2ts {
			for sn, off := uint32(0), r.BufferOffset; off < r.BufferOffset+r.DesiredLength; sn++ {
				d, ok := f.read().(*dataOut)
				if !ok || d.TTT != r.TTT || d.DataSN != sn || d.BufferOffset != off || len(d.Data) > 4096 {
					f.t.Errorf("fake target: Data-Out %+v for R2T %+v", d, r)
					return
				}
				copy(got[off:], d.Data)
				off += uint32(len(d.Data))
				if d.Final != (off == r.BufferOffset+r.DesiredLength) {
					f.t.Errorf("fake target: Data-Out at %d has F=%v", d.BufferOffset, d.Final)
				}
			}
		}
		f.send(&scsiResponse{ITT: c.ITT, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
		if l, ok := f.read().(*logoutRequest); ok {
			f.send(&logoutResponse{ITT: l.ITT, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
		}
		f.drain()
	})
	s, err := Dial(t.Context(), fakeConfig(portal))
	if err != nil {
		t.Fatal(err)
	}
	s.blockSize[1] = 512 // no READ CAPACITY in this script
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i * 7)
	}
	if n, err := s.WriteAt(t.Context(), 1, want, 0); err != nil || n != size {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Error("the target got other data")
	}
}

// TestFakeTargetStallsMidData cancels a read while the target has sent
// only part of a Data-In PDU: ReadAt must return at once, the rest of that
// PDU must not land in the caller's buffer afterwards, and the session must
// go on.
func TestFakeTargetStallsMidData(t *testing.T) {
	resume := make(chan struct{})
	portal := listenFake(t, func(f *fakeTarget) {
		f.window = 8
		if !f.login() {
			return
		}
		c, ok := f.read().(*scsiCommand)
		if !ok {
			return
		}
		data := bytes.Repeat([]byte{0xaa}, 4096)
		h := header(&dataIn{Final: true, HasStatus: true, ITT: c.ITT, TTT: reservedTag, StatSN: f.nextStatSN(),
			ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN(), segment: segment{data}})
		f.conn.Write(h[:])
		f.conn.Write(data[:1000])
		<-resume
		f.conn.Write(data[1000:])
		c2, ok := f.read().(*scsiCommand)
		if !ok {
			return
		}
		f.serveSCSI(c2)
		if l, ok := f.read().(*logoutRequest); ok {
			f.send(&logoutResponse{ITT: l.ITT, StatSN: f.nextStatSN(), ExpCmdSN: f.expCmdSN, MaxCmdSN: f.maxCmdSN()})
		}
		f.drain()
	})
	s, err := Dial(t.Context(), fakeConfig(portal))
	if err != nil {
		t.Fatal(err)
	}
	s.blockSize[1] = 512
	ctx, cancel := context.WithCancel(t.Context())
	p := make([]byte, 4096)
	done := make(chan error, 1)
	go func() {
		_, err := s.ReadAt(ctx, 1, p, 0)
		done <- err
	}()
	// Wait until the first bytes have landed: the reader is inside the PDU.
	for deadline := time.Now().Add(10 * time.Second); ; {
		s.mu.Lock()
		var reading bool
		for _, tk := range s.tasks {
			tk.mu.Lock()
			reading = reading || tk.reading
			tk.mu.Unlock()
		}
		s.mu.Unlock()
		if reading {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reader never started on the Data-In")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled ReadAt: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled ReadAt did not return")
	}
	snapshot := bytes.Clone(p)
	close(resume)
	q := make([]byte, 4096)
	if _, err := s.ReadAt(t.Context(), 1, q, 512*8); err != nil {
		t.Fatalf("ReadAt after the cancelled one: %v", err)
	}
	for i := range 8 {
		if !bytes.Equal(q[i*512:(i+1)*512], fakeBlock(uint64(8+i))) {
			t.Fatalf("block %d wrong", 8+i)
		}
	}
	if !bytes.Equal(p, snapshot) {
		t.Error("the cancelled read's buffer changed after ReadAt returned")
	}
	if err := s.Close(t.Context()); err != nil {
		t.Errorf("Close: %v", err)
	}
}
