package iscsi

import (
	"bufio"
	"context"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// Config says where a session goes and how it logs in.
type Config struct {
	Portal       string // host:port of the target portal
	TargetIQN    string // the target's name; ignored by Discover
	InitiatorIQN string // this initiator's name, which the target's ACL admits

	// CHAPUser and CHAPSecret authenticate the initiator to the target
	// (CHAP with MD5); empty for no CHAP. With them and without mutual
	// CHAP, a target that asks for no authentication is accepted.
	CHAPUser, CHAPSecret string
	// MutualUser and MutualSecret are the target's credentials for mutual
	// CHAP: the target must prove it knows MutualSecret under the name
	// MutualUser, or the login fails. Empty: one-way CHAP.
	MutualUser, MutualSecret string

	// Timeout bounds each command (and each login step): a command the
	// target does not finish in time fails with ErrTimeout and breaks the
	// session. Default 30 s.
	Timeout time.Duration
	// MaxInFlight is how many commands the session keeps outstanding at
	// most; the target's CmdSN window can allow fewer. Default 16.
	MaxInFlight int

	// Logger receives debug records (negotiated parameters, retried UNIT
	// ATTENTIONs, asynchronous events). Nil: none.
	Logger *slog.Logger
}

const (
	defaultTimeout     = 30 * time.Second
	defaultMaxInFlight = 16
	defaultPort        = "3260"
)

func (c Config) withDefaults(discovery bool) (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: iscsi config: %s", errdefs.ErrInvalid, fmt.Sprintf(format, args...))
	}
	if c.Portal == "" {
		return bad("no portal")
	}
	if _, _, err := net.SplitHostPort(c.Portal); err != nil {
		c.Portal = net.JoinHostPort(strings.Trim(c.Portal, "[]"), defaultPort)
	}
	if c.InitiatorIQN == "" {
		return bad("no initiator name")
	}
	if !discovery && c.TargetIQN == "" {
		return bad("no target name")
	}
	if (c.CHAPUser == "") != (c.CHAPSecret == "") {
		return bad("CHAP needs both a user and a secret")
	}
	if (c.MutualUser == "") != (c.MutualSecret == "") {
		return bad("mutual CHAP needs both the target's user and secret")
	}
	if c.MutualUser != "" && c.CHAPUser == "" {
		return bad("mutual CHAP needs the initiator's CHAP credentials too")
	}
	if c.Timeout < 0 || c.MaxInFlight < 0 {
		return bad("negative Timeout or MaxInFlight")
	}
	if c.Timeout == 0 {
		c.Timeout = defaultTimeout
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = defaultMaxInFlight
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// params are a session's operational parameters after negotiation
// (RFC 7143 13).
type params struct {
	maxRecvData   int // MaxRecvDataSegmentLength this initiator declared
	maxXmitData   int // the target's MaxRecvDataSegmentLength: the most we may send in one PDU
	maxBurst      int
	firstBurst    int
	initialR2T    bool
	immediateData bool
	maxR2T        int
	time2Wait     int
	time2Retain   int
	erl           int
}

// defaultParams are RFC 7143's defaults, in force for every key a
// negotiation leaves out.
var defaultParams = params{
	maxRecvData: 8192, maxXmitData: 8192, maxBurst: 262144, firstBurst: 65536,
	initialR2T: true, immediateData: true, maxR2T: 1, time2Wait: 2, time2Retain: 20,
}

// ourMaxRecvData is the MaxRecvDataSegmentLength this initiator declares:
// large Data-In PDUs keep the per-PDU cost down.
const ourMaxRecvData = 262144

// How each key's result is computed from both offers (RFC 7143 13).
type keyRule int

const (
	ruleDeclarative keyRule = iota
	ruleMin
	ruleMax
	ruleOr  // boolean: Yes if either says Yes
	ruleAnd // boolean: Yes only if both say Yes
	ruleList
)

var keyRules = map[string]keyRule{
	"HeaderDigest": ruleList, "DataDigest": ruleList,
	"MaxConnections": ruleMin, "InitialR2T": ruleOr, "ImmediateData": ruleAnd,
	"MaxRecvDataSegmentLength": ruleDeclarative, "MaxBurstLength": ruleMin,
	"FirstBurstLength": ruleMin, "DefaultTime2Wait": ruleMax, "DefaultTime2Retain": ruleMin,
	"MaxOutstandingR2T": ruleMin, "DataPDUInOrder": ruleOr, "DataSequenceInOrder": ruleOr,
	"ErrorRecoveryLevel": ruleMin, "IFMarker": ruleAnd, "OFMarker": ruleAnd,
	"TargetAlias": ruleDeclarative, "TargetPortalGroupTag": ruleDeclarative,
	"TargetAddress": ruleDeclarative,
}

// offer returns what this initiator proposes in operational negotiation,
// in the order it sends it. Every key it knows has a value here so that it
// can answer a key the target proposes on its own.
func offer(discovery bool) (order []string, values map[string]string) {
	values = map[string]string{
		"HeaderDigest": "None", "DataDigest": "None",
		"MaxRecvDataSegmentLength": strconv.Itoa(ourMaxRecvData),
		// The rest is irrelevant to discovery sessions.
		"MaxConnections": "1", "InitialR2T": "No", "ImmediateData": "Yes",
		"MaxBurstLength": "16776192", "FirstBurstLength": "262144",
		"DefaultTime2Wait": "0", "DefaultTime2Retain": "0", "MaxOutstandingR2T": "8",
		"DataPDUInOrder": "Yes", "DataSequenceInOrder": "Yes", "ErrorRecoveryLevel": "0",
		"IFMarker": "No", "OFMarker": "No",
	}
	order = []string{"HeaderDigest", "DataDigest", "MaxRecvDataSegmentLength"}
	if !discovery {
		order = append(order, "MaxConnections", "InitialR2T", "ImmediateData", "MaxBurstLength",
			"FirstBurstLength", "DefaultTime2Wait", "DefaultTime2Retain", "MaxOutstandingR2T",
			"DataPDUInOrder", "DataSequenceInOrder", "ErrorRecoveryLevel")
	}
	return order, values
}

// negotiate returns the result of key when this initiator says ours and
// the target theirs, or an error if theirs is not a value the rules allow.
func negotiate(key, ours, theirs string) (string, error) {
	bad := func() (string, error) {
		return "", fmt.Errorf("target answered %s=%q to %s=%q", key, theirs, key, ours)
	}
	switch keyRules[key] {
	case ruleList:
		for _, v := range strings.Split(ours, ",") {
			if v == theirs {
				return v, nil
			}
		}
		return bad()
	case ruleMin, ruleMax:
		a, err1 := strconv.ParseUint(ours, 10, 32)
		b, err2 := strconv.ParseUint(theirs, 10, 32)
		if err1 != nil || err2 != nil {
			return bad()
		}
		if (keyRules[key] == ruleMin) == (b < a) {
			a = b
		}
		return strconv.FormatUint(a, 10), nil
	case ruleOr, ruleAnd:
		if theirs != "Yes" && theirs != "No" {
			return bad()
		}
		if keyRules[key] == ruleOr {
			return yesNo(ours == "Yes" || theirs == "Yes"), nil
		}
		return yesNo(ours == "Yes" && theirs == "Yes"), nil
	}
	return theirs, nil
}

func yesNo(b bool) string {
	if b {
		return "Yes"
	}
	return "No"
}

// apply sets the parameter key to its negotiated value.
func (p *params) apply(key, value string) error {
	num := func() (int, error) {
		n, err := strconv.ParseUint(value, 10, 24)
		if err != nil {
			return 0, fmt.Errorf("%s=%q: %v", key, value, err)
		}
		return int(n), nil
	}
	var err error
	switch key {
	case "HeaderDigest", "DataDigest":
		if value != "None" {
			err = fmt.Errorf("%s=%s: only None is supported", key, value)
		}
	case "MaxConnections":
		var n int
		if n, err = num(); err == nil && n != 1 {
			err = fmt.Errorf("MaxConnections=%d: only 1 is supported", n)
		}
	case "ErrorRecoveryLevel":
		if p.erl, err = num(); err == nil && p.erl != 0 {
			err = fmt.Errorf("ErrorRecoveryLevel=%d: only 0 is supported", p.erl)
		}
	case "MaxRecvDataSegmentLength": // the target's declaration
		p.maxXmitData, err = num()
		if err == nil && p.maxXmitData < 512 {
			err = fmt.Errorf("MaxRecvDataSegmentLength=%d is below 512", p.maxXmitData)
		}
	case "MaxBurstLength":
		p.maxBurst, err = num()
		if err == nil && p.maxBurst < 512 {
			err = fmt.Errorf("MaxBurstLength=%d is below 512", p.maxBurst)
		}
	case "FirstBurstLength":
		p.firstBurst, err = num()
		if err == nil && p.firstBurst < 512 {
			err = fmt.Errorf("FirstBurstLength=%d is below 512", p.firstBurst)
		}
	case "DefaultTime2Wait":
		p.time2Wait, err = num()
	case "DefaultTime2Retain":
		p.time2Retain, err = num()
	case "MaxOutstandingR2T":
		p.maxR2T, err = num()
		if err == nil && p.maxR2T < 1 {
			err = errors.New("MaxOutstandingR2T=0")
		}
	case "InitialR2T":
		p.initialR2T = value == "Yes"
	case "ImmediateData":
		p.immediateData = value == "Yes"
	case "DataPDUInOrder", "DataSequenceInOrder":
		if value != "Yes" {
			err = fmt.Errorf("%s=%s: out-of-order data is not supported", key, value)
		}
	}
	return err
}

// loginConn is a connection during login, and the whole of a discovery
// session: one request and one response at a time, no reader goroutine.
type loginConn struct {
	cfg       Config
	discovery bool
	conn      net.Conn
	br        *bufio.Reader
	buf       []byte

	isid      [6]byte
	tsih      uint16
	itt       uint32
	cmdSN     uint32 // the next CmdSN
	expStatSN uint32
	expCmdSN  uint32
	maxCmdSN  uint32
	params    params
	alias     string
}

// maxLoginData is the MaxRecvDataSegmentLength in force during login
// (RFC 7143 13.12: 8192 until negotiated).
const maxLoginData = 8192

func dialTCP(ctx context.Context, portal string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", portal)
	if err != nil {
		return nil, fmt.Errorf("%w: iscsi: connect to %s: %w", errdefs.ErrUnavailable, portal, err)
	}
	return conn, nil
}

func newLoginConn(cfg Config, conn net.Conn, discovery bool) (*loginConn, error) {
	l := &loginConn{cfg: cfg, discovery: discovery, conn: conn, br: bufio.NewReaderSize(conn, 64<<10), params: defaultParams}
	if _, err := rand.Read(l.isid[1:]); err != nil {
		return nil, err
	}
	l.isid[0] = 0x80 // ISID type "random" (RFC 7143 11.12.5)
	l.cmdSN = 1
	return l, nil
}

// what names the session in errors.
func (l *loginConn) what() string {
	if l.discovery {
		return "discovery session at " + l.cfg.Portal
	}
	return "target " + l.cfg.TargetIQN + " at " + l.cfg.Portal
}

// guard bounds one exchange by the timeout and ctx: it sets the
// connection's deadline and cuts it short when ctx ends. The returned
// function undoes that and turns a deadline error into ctx's error.
func (l *loginConn) guard(ctx context.Context) func(*error) {
	deadline := time.Now().Add(l.cfg.Timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	l.conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { l.conn.SetDeadline(time.Unix(1, 0)) })
	return func(err *error) {
		stop()
		l.conn.SetDeadline(time.Time{})
		if *err == nil {
			return
		}
		if ctx.Err() != nil {
			*err = fmt.Errorf("iscsi: %s: %w", l.what(), context.Cause(ctx))
		} else if ne, ok := errors.AsType[net.Error](*err); ok && ne.Timeout() {
			*err = fmt.Errorf("iscsi: %s: %w: no answer within %v", l.what(), ErrTimeout, l.cfg.Timeout)
		}
	}
}

func (l *loginConn) send(p pdu) error {
	h := header(p)
	data := p.payload()
	bufs := net.Buffers{h[:], data, zeros[:pad(len(data))]}
	_, err := bufs.WriteTo(l.conn)
	return err
}

// receive reads the next PDU, answering NOP-Ins on the way.
func (l *loginConn) receive() (pdu, error) {
	for {
		p, err := readPDU(l.br, l.buf, l.params.maxRecvData)
		if err != nil {
			if errors.Is(err, errProtocol) {
				return nil, err
			}
			return nil, connLost(err)
		}
		nop, ok := p.(*nopIn)
		if !ok {
			return p, nil
		}
		if nop.ITT == reservedTag {
			l.updateSNs(nop.ExpCmdSN, nop.MaxCmdSN)
		}
		if nop.TTT != reservedTag {
			reply := &nopOut{immediateFlag: immediateFlag{true}, ITT: reservedTag, TTT: nop.TTT, LUN: nop.LUN,
				CmdSN: l.cmdSN, ExpStatSN: l.expStatSN, segment: segment{append([]byte(nil), nop.Data...)}}
			if err := l.send(reply); err != nil {
				return nil, connLost(err)
			}
		}
	}
}

func (l *loginConn) updateSNs(exp, max uint32) {
	if int32(max-exp) < -1 {
		return
	}
	if int32(exp-l.expCmdSN) > 0 {
		l.expCmdSN = exp
	}
	if int32(max-l.maxCmdSN) > 0 {
		l.maxCmdSN = max
	}
}

// connLost names a failed read or write of the connection.
func connLost(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("connection closed: %w", err)
	}
	if errors.Is(err, io.EOF) {
		return errors.New("connection lost: the target closed it")
	}
	return fmt.Errorf("connection lost: %w", err)
}

// exchange sends one login request, continuing text the target splits
// over several responses, and returns the last response and all its text.
func (l *loginConn) exchange(ctx context.Context, csg, nsg uint8, transit bool, kvs []textKV) (_ *loginResponse, _ []textKV, err error) {
	defer l.guard(ctx)(&err)
	data := encodeText(kvs)
	// Text longer than a PDU goes in pieces with C set; the target answers
	// each but the last with an empty response.
	for len(data) > maxLoginData {
		req := l.request(csg, nsg, false)
		req.Continue, req.Data = true, data[:maxLoginData]
		data = data[maxLoginData:]
		if _, err := l.roundTrip(req); err != nil {
			return nil, nil, err
		}
	}
	req := l.request(csg, nsg, transit)
	req.Data = data
	resp, err := l.roundTrip(req)
	if err != nil {
		return nil, nil, err
	}
	text := append([]byte(nil), resp.Data...)
	for resp.Continue {
		if len(text) > 64*maxLoginData {
			return nil, nil, fmt.Errorf("%w: login response text longer than %d bytes", errProtocol, len(text))
		}
		if resp, err = l.roundTrip(l.request(csg, nsg, false)); err != nil {
			return nil, nil, err
		}
		text = append(text, resp.Data...)
	}
	got, err := parseText(text)
	if err != nil {
		return nil, nil, err
	}
	return resp, got, nil
}

func (l *loginConn) request(csg, nsg uint8, transit bool) *loginRequest {
	req := &loginRequest{Transit: transit, CSG: csg, ISID: l.isid, TSIH: l.tsih, ITT: l.itt, CmdSN: l.cmdSN, ExpStatSN: l.expStatSN}
	if transit {
		req.NSG = nsg
	}
	return req
}

func (l *loginConn) roundTrip(req *loginRequest) (*loginResponse, error) {
	if err := l.send(req); err != nil {
		return nil, connLost(err)
	}
	p, err := l.receive()
	if err != nil {
		return nil, err
	}
	switch p := p.(type) {
	case *loginResponse:
		if p.ITT != req.ITT {
			return nil, fmt.Errorf("%w: login response for task 0x%x, not 0x%x", errProtocol, p.ITT, req.ITT)
		}
		if p.StatusClass != 0 {
			le := &LoginError{Portal: l.cfg.Portal, Class: p.StatusClass, Detail: p.StatusDetail}
			if !l.discovery {
				le.Target = l.cfg.TargetIQN
			}
			if kvs, err := parseText(p.Data); err == nil {
				le.Redirect, _ = lookup(kvs, "TargetAddress")
			}
			return nil, le
		}
		if p.VersionActive != 0 {
			return nil, fmt.Errorf("%w: target uses iSCSI version %d, not 0", errProtocol, p.VersionActive)
		}
		// Login responses set the numbering outright (the target's
		// ExpCmdSN is our initial CmdSN).
		l.expStatSN = p.StatSN + 1
		l.expCmdSN, l.maxCmdSN = p.ExpCmdSN, p.MaxCmdSN
		l.tsih = p.TSIH
		return p, nil
	case *reject:
		return nil, fmt.Errorf("%w: target rejected the login request: %s", errProtocol, rejectReason(p.Reason))
	}
	return nil, fmt.Errorf("%w: %v during login", errProtocol, p.op())
}

func rejectReason(r uint8) string {
	if s, ok := rejectReasons[r]; ok {
		return fmt.Sprintf("%s (0x%02x)", s, r)
	}
	return fmt.Sprintf("reason 0x%02x", r)
}

// login runs the login phase to the full-feature phase: security
// negotiation (none or CHAP), then operational negotiation.
func (l *loginConn) login(ctx context.Context) error {
	if err := l.security(ctx); err != nil {
		return err
	}
	return l.operational(ctx)
}

func (l *loginConn) initialKeys() []textKV {
	kvs := []textKV{{"InitiatorName", l.cfg.InitiatorIQN}}
	if l.discovery {
		kvs = append(kvs, textKV{"SessionType", "Discovery"})
	} else {
		kvs = append(kvs, textKV{"SessionType", "Normal"}, textKV{"TargetName", l.cfg.TargetIQN})
	}
	return kvs
}

func (l *loginConn) security(ctx context.Context) error {
	kvs := l.initialKeys()
	if l.cfg.CHAPUser == "" {
		kvs = append(kvs, textKV{"AuthMethod", "None"})
		resp, got, err := l.exchange(ctx, stageSecurity, stageOperational, true, kvs)
		if err != nil {
			return err
		}
		if m, ok := lookup(got, "AuthMethod"); ok && m != "None" {
			return fmt.Errorf("%w: iscsi: %s: target wants AuthMethod %s; configure CHAP credentials",
				errdefs.ErrUnauthenticated, l.what(), m)
		}
		return l.leaveSecurity(ctx, resp)
	}

	// With mutual CHAP the target must authenticate itself, so None is not
	// offered; one-way CHAP lets a target that wants no authentication
	// have none (tgt without an incoming account refuses a lone CHAP).
	methods := "CHAP,None"
	if l.cfg.MutualUser != "" {
		methods = "CHAP"
	}
	kvs = append(kvs, textKV{"AuthMethod", methods})
	resp, got, err := l.exchange(ctx, stageSecurity, stageOperational, false, kvs)
	if err != nil {
		return err
	}
	switch m, _ := lookup(got, "AuthMethod"); m {
	case "CHAP":
	case "None":
		if l.cfg.MutualUser != "" {
			return fmt.Errorf("%w: iscsi: %s: target chose no authentication, so it cannot prove itself for mutual CHAP",
				errdefs.ErrUnauthenticated, l.what())
		}
		return l.leaveSecurity(ctx, resp)
	default:
		return fmt.Errorf("%w: iscsi: %s: target answered AuthMethod=%q to %q", errProtocol, l.what(), m, methods)
	}

	_, got, err = l.exchange(ctx, stageSecurity, stageOperational, false, []textKV{{"CHAP_A", "5"}})
	if err != nil {
		return err
	}
	if a, _ := lookup(got, "CHAP_A"); a != "5" {
		return fmt.Errorf("%w: iscsi: %s: target answered CHAP_A=%q to CHAP_A=5 (MD5)", errdefs.ErrUnauthenticated, l.what(), a)
	}
	id, challenge, err := chapChallenge(got)
	if err != nil {
		return fmt.Errorf("iscsi: %s: %w", l.what(), err)
	}
	kvs = []textKV{{"CHAP_N", l.cfg.CHAPUser}, {"CHAP_R", chapResponse(id, l.cfg.CHAPSecret, challenge)}}
	var ourID byte
	var ourChallenge []byte
	if l.cfg.MutualUser != "" {
		ourChallenge = make([]byte, 32)
		var b [1]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		if _, err := rand.Read(ourChallenge); err != nil {
			return err
		}
		ourID = b[0]
		kvs = append(kvs, textKV{"CHAP_I", strconv.Itoa(int(ourID))}, textKV{"CHAP_C", "0x" + hex.EncodeToString(ourChallenge)})
	}
	resp, got, err = l.exchange(ctx, stageSecurity, stageOperational, true, kvs)
	if err != nil {
		return err
	}
	if l.cfg.MutualUser != "" {
		if err := l.verifyTarget(got, ourID, ourChallenge); err != nil {
			return err
		}
	}
	return l.leaveSecurity(ctx, resp)
}

// verifyTarget checks the target's answer to this initiator's challenge.
func (l *loginConn) verifyTarget(got []textKV, id byte, challenge []byte) error {
	fail := func(why string) error {
		return fmt.Errorf("%w: iscsi: %s failed mutual CHAP authentication: %s", errdefs.ErrUnauthenticated, l.what(), why)
	}
	name, ok := lookup(got, "CHAP_N")
	r, ok2 := lookup(got, "CHAP_R")
	if !ok || !ok2 {
		return fail("it sent no CHAP_N and CHAP_R")
	}
	if name != l.cfg.MutualUser {
		return fail(fmt.Sprintf("it calls itself %q, not %q", name, l.cfg.MutualUser))
	}
	theirs, err := decodeBinary(r)
	if err != nil {
		return fail("CHAP_R: " + err.Error())
	}
	want := chapDigest(id, l.cfg.MutualSecret, challenge)
	if subtle.ConstantTimeCompare(theirs, want[:]) != 1 {
		return fail("wrong CHAP_R (the target's secret differs)")
	}
	return nil
}

// leaveSecurity moves on to operational negotiation if the target has not
// yet agreed to.
func (l *loginConn) leaveSecurity(ctx context.Context, resp *loginResponse) error {
	for range 4 {
		if resp.Transit && resp.NSG == stageOperational {
			return nil
		}
		var err error
		if resp, _, err = l.exchange(ctx, stageSecurity, stageOperational, true, nil); err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: iscsi: %s: target stays in security negotiation", errProtocol, l.what())
}

func (l *loginConn) operational(ctx context.Context) error {
	order, ours := offer(l.discovery)
	var send []textKV
	for _, k := range order {
		send = append(send, textKV{k, ours[k]})
	}
	offered := map[string]bool{}
	results := map[string]string{}
	for range 8 {
		for _, kv := range send {
			offered[kv.Key] = true
		}
		resp, got, err := l.exchange(ctx, stageOperational, stageFullFeature, true, send)
		if err != nil {
			return err
		}
		send = nil
		for _, kv := range got {
			key, theirs := kv.Key, kv.Value
			switch {
			case key == "TargetAlias":
				l.alias = theirs
				continue
			case keyRules[key] == ruleDeclarative:
				results[key] = theirs
				continue
			case theirs == "NotUnderstood" || theirs == "Irrelevant" || theirs == "Reject":
				continue // the default stays in force
			}
			our, known := ours[key]
			if !known {
				send = append(send, textKV{key, "NotUnderstood"})
				continue
			}
			result, err := negotiate(key, our, theirs)
			if err != nil {
				return fmt.Errorf("%w: iscsi: %s: %v", errProtocol, l.what(), err)
			}
			results[key] = result
			if !offered[key] {
				// The target proposed it: answer with the result.
				send = append(send, textKV{key, result})
			}
		}
		if resp.Transit && resp.NSG == stageFullFeature && len(send) == 0 {
			return l.applyResults(results)
		}
	}
	return fmt.Errorf("%w: iscsi: %s: operational negotiation does not end", errProtocol, l.what())
}

func (l *loginConn) applyResults(results map[string]string) error {
	p := defaultParams
	for key, value := range results {
		if err := p.apply(key, value); err != nil {
			return fmt.Errorf("%w: iscsi: %s: %v", errProtocol, l.what(), err)
		}
	}
	p.maxRecvData = ourMaxRecvData
	p.firstBurst = min(p.firstBurst, p.maxBurst)
	l.params = p
	return nil
}

// chapChallenge returns the target's CHAP_I and CHAP_C.
func chapChallenge(got []textKV) (byte, []byte, error) {
	i, ok := lookup(got, "CHAP_I")
	c, ok2 := lookup(got, "CHAP_C")
	if !ok || !ok2 {
		return 0, nil, fmt.Errorf("%w: target sent no CHAP_I and CHAP_C", errProtocol)
	}
	id, err := strconv.ParseUint(i, 0, 8)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: CHAP_I=%q: %v", errProtocol, i, err)
	}
	challenge, err := decodeBinary(c)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: CHAP_C: %v", errProtocol, err)
	}
	return byte(id), challenge, nil
}

func chapDigest(id byte, secret string, challenge []byte) [md5.Size]byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	var sum [md5.Size]byte
	h.Sum(sum[:0])
	return sum
}

func chapResponse(id byte, secret string, challenge []byte) string {
	sum := chapDigest(id, secret, challenge)
	return "0x" + hex.EncodeToString(sum[:])
}

// decodeBinary decodes a binary value: 0x followed by hex digits or 0b
// followed by base64 (RFC 7143 6.1).
func decodeBinary(s string) ([]byte, error) {
	if len(s) < 3 || s[0] != '0' {
		return nil, fmt.Errorf("%q is not 0x<hex> or 0b<base64>", truncate(s))
	}
	var b []byte
	var err error
	switch s[1] {
	case 'x', 'X':
		digits := s[2:]
		if len(digits)%2 == 1 {
			digits = "0" + digits
		}
		b, err = hex.DecodeString(digits)
	case 'b', 'B':
		b, err = base64.StdEncoding.DecodeString(s[2:])
	default:
		err = errors.New("unknown encoding")
	}
	if err != nil {
		return nil, fmt.Errorf("%q: %v", truncate(s), err)
	}
	return b, nil
}

// DiscoveredTarget is one target a SendTargets discovery returned.
type DiscoveredTarget struct {
	Name string
	// Portals are the target's addresses (host:port) as the target lists
	// them, without portal group tags; the discovery portal itself when
	// the target lists none.
	Portals []string
}

// Discover logs in to a discovery session at cfg.Portal as
// cfg.InitiatorIQN (with CHAP if cfg has credentials), asks for
// SendTargets=All, logs out and returns the targets the target's ACLs let
// this initiator see. cfg.TargetIQN is ignored.
func Discover(ctx context.Context, cfg Config) ([]DiscoveredTarget, error) {
	cfg, err := cfg.withDefaults(true)
	if err != nil {
		return nil, err
	}
	conn, err := dialTCP(ctx, cfg.Portal)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	l, err := newLoginConn(cfg, conn, true)
	if err != nil {
		return nil, err
	}
	if err := l.login(ctx); err != nil {
		return nil, err
	}
	l.buf = make([]byte, l.params.maxRecvData+4)
	text, err := l.text(ctx, []textKV{{"SendTargets", "All"}})
	if err != nil {
		return nil, err
	}
	targets, err := parseSendTargets(text, cfg.Portal)
	if err != nil {
		return nil, fmt.Errorf("iscsi: SendTargets from %s: %w", cfg.Portal, err)
	}
	if err := l.logout(ctx); err != nil {
		cfg.Logger.Debug("iscsi discovery logout failed", "portal", cfg.Portal, "err", err)
	}
	return targets, nil
}

// text sends a Text Request and returns the whole answer, asking for more
// while the target sets the Continue bit.
func (l *loginConn) text(ctx context.Context, kvs []textKV) (_ []textKV, err error) {
	defer l.guard(ctx)(&err)
	req := &textRequest{Final: true, ITT: 1, TTT: reservedTag, segment: segment{encodeText(kvs)}}
	var all []byte
	for range 1024 {
		req.CmdSN, req.ExpStatSN = l.cmdSN, l.expStatSN
		l.cmdSN++
		if err := l.send(req); err != nil {
			return nil, connLost(err)
		}
		p, err := l.receive()
		if err != nil {
			return nil, err
		}
		resp, ok := p.(*textResponse)
		if !ok {
			if rj, ok := p.(*reject); ok {
				return nil, fmt.Errorf("%w: target rejected the text request: %s", errProtocol, rejectReason(rj.Reason))
			}
			return nil, fmt.Errorf("%w: %v in answer to a text request", errProtocol, p.op())
		}
		l.expStatSN = resp.StatSN + 1
		l.updateSNs(resp.ExpCmdSN, resp.MaxCmdSN)
		all = append(all, resp.Data...)
		if !resp.Continue {
			return parseText(all)
		}
		// Ask for the rest: an empty request naming the target's tag.
		req = &textRequest{Final: true, ITT: req.ITT, TTT: resp.TTT}
	}
	return nil, fmt.Errorf("%w: text response does not end", errProtocol)
}

func (l *loginConn) logout(ctx context.Context) (err error) {
	defer l.guard(ctx)(&err)
	req := &logoutRequest{immediateFlag: immediateFlag{true}, ITT: 2, CmdSN: l.cmdSN, ExpStatSN: l.expStatSN}
	if err := l.send(req); err != nil {
		return connLost(err)
	}
	p, err := l.receive()
	if err != nil {
		return err
	}
	if resp, ok := p.(*logoutResponse); !ok || resp.Response != 0 {
		return fmt.Errorf("%w: logout answered by %v", errProtocol, p.op())
	}
	return nil
}

// parseSendTargets groups TargetName and TargetAddress keys.
func parseSendTargets(kvs []textKV, portal string) ([]DiscoveredTarget, error) {
	var targets []DiscoveredTarget
	for _, kv := range kvs {
		switch kv.Key {
		case "TargetName":
			targets = append(targets, DiscoveredTarget{Name: kv.Value})
		case "TargetAddress":
			if len(targets) == 0 {
				return nil, fmt.Errorf("%w: TargetAddress before any TargetName", errProtocol)
			}
			addr := kv.Value
			if i := strings.LastIndexByte(addr, ','); i >= 0 {
				addr = addr[:i] // the portal group tag
			}
			if _, _, err := net.SplitHostPort(addr); err != nil {
				addr = net.JoinHostPort(strings.Trim(addr, "[]"), defaultPort)
			}
			t := &targets[len(targets)-1]
			t.Portals = append(t.Portals, addr)
		}
	}
	for i := range targets {
		if len(targets[i].Portals) == 0 {
			targets[i].Portals = []string{portal}
		}
	}
	return targets, nil
}
