package tgt

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// parseTargets parses "tgtadm --mode target --op show" (usr/target.c,
// tgt_target_show_all): a "Target N: name" line per target, sections at
// four spaces of indent, entries at eight, details at twelve and more.
func parseTargets(out string) ([]Target, error) {
	var p targetParser
	for n, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if err := p.line(indent, strings.TrimSpace(line)); err != nil {
			return nil, fmt.Errorf("tgtadm target show, line %d %q: %w", n+1, line, err)
		}
	}
	p.endTarget()
	return p.targets, nil
}

type targetParser struct {
	targets []Target
	t       *Target // the target being read
	section string  // its section being read, "LUN information", ...
	lun     *LUN    // the LUN being read
	sess    *Session
}

func (p *targetParser) endEntry() {
	// LUN 0 is tgt's controller, present in every target.
	if p.lun != nil && p.lun.Number != 0 {
		p.t.LUNs = append(p.t.LUNs, *p.lun)
	}
	if p.sess != nil {
		p.t.Sessions = append(p.t.Sessions, *p.sess)
	}
	p.lun, p.sess = nil, nil
}

func (p *targetParser) endTarget() {
	if p.t != nil {
		p.endEntry()
		p.targets = append(p.targets, *p.t)
	}
	p.t, p.section = nil, ""
}

func (p *targetParser) line(indent int, text string) error {
	switch {
	case indent == 0:
		p.endTarget()
		num, name, ok := strings.Cut(strings.TrimPrefix(text, "Target "), ": ")
		tid, err := strconv.Atoi(num)
		if !strings.HasPrefix(text, "Target ") || !ok || err != nil || name == "" {
			return errors.New("want Target N: name")
		}
		p.t = &Target{TID: tid, IQN: name}
		return nil
	case p.t == nil:
		return errors.New("outside a target")
	case indent == 4:
		p.endEntry()
		p.section = strings.TrimSuffix(text, ":")
		return nil
	}
	key, value, _ := strings.Cut(text, ": ")
	switch p.section {
	case "System information":
		// Driver, State, and NOP settings when set: nothing Bulkhead uses.
	case "I_T nexus information":
		switch {
		case indent == 8 && key == "I_T nexus":
			p.endEntry()
			id, err := strconv.ParseUint(value, 10, 64)
			if err != nil {
				return errors.New("bad nexus id")
			}
			p.sess = &Session{ID: id, CID: -1}
		case p.sess == nil:
			return errors.New("session detail outside a session")
		case key == "Initiator":
			// "Initiator: iqn... alias: none"
			p.sess.Initiator, _, _ = strings.Cut(value, " alias: ")
		case key == "Connection" && p.sess.CID < 0:
			cid, err := strconv.Atoi(value)
			if err != nil {
				return errors.New("bad connection id")
			}
			p.sess.CID = cid
		case key == "IP Address" && p.sess.Address == "":
			p.sess.Address = value
		}
	case "LUN information":
		switch {
		case indent == 8 && key == "LUN":
			p.endEntry()
			num, err := strconv.Atoi(value)
			if err != nil {
				return errors.New("bad LUN number")
			}
			p.lun = &LUN{Number: num}
		case p.lun == nil:
			return errors.New("LUN detail outside a LUN")
		case key == "Size":
			// "Size: 8 MB, Block size: 512"
			size, _, _ := strings.Cut(value, ",")
			mb, ok := strings.CutSuffix(size, " MB")
			n, err := strconv.ParseInt(mb, 10, 64)
			if !ok || err != nil {
				return errors.New("bad size")
			}
			p.lun.SizeBytes = n * 1000 * 1000
		case key == "Readonly":
			p.lun.ReadOnly = value == "Yes"
		case key == "Backing store path" && value != "None":
			p.lun.BackingStore = value
		}
	case "Account information":
		if user, ok := strings.CutSuffix(text, " (outgoing)"); ok {
			p.t.OutgoingAccount = user
		} else {
			p.t.Accounts = append(p.t.Accounts, text)
		}
	case "ACL information":
		if isAddress(text) {
			p.t.Addresses = append(p.t.Addresses, text)
		} else {
			p.t.Initiators = append(p.t.Initiators, text)
		}
	default:
		return fmt.Errorf("unknown section %q", p.section)
	}
	return nil
}

// isAddress tells an ACL address entry from an initiator name, which
// tgtadm lists together: addresses are IPs, networks or ALL; names are
// iqn./eui./naa. strings.
func isAddress(s string) bool {
	if s == "ALL" || net.ParseIP(s) != nil {
		return true
	}
	_, _, err := net.ParseCIDR(s)
	return err == nil
}

// parseAccounts parses "tgtadm --mode account --op show": nothing at all
// without accounts, else "Account list:" and one indented name a line.
func parseAccounts(out string) ([]string, error) {
	var users []string
	for n, line := range strings.Split(out, "\n") {
		text := strings.TrimSpace(line)
		switch {
		case text == "":
		case n == 0 && text == "Account list:":
		case strings.HasPrefix(line, " "):
			users = append(users, text)
		default:
			return nil, fmt.Errorf("tgtadm account show, line %d %q: unexpected", n+1, line)
		}
	}
	return users, nil
}

// parsePortals parses "tgtadm --lld iscsi --mode portal --op show":
// "Portal: 127.0.0.1:3260,1" lines (address, then the portal group tag).
func parsePortals(out string) ([]string, error) {
	var portals []string
	for n, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		rest, ok := strings.CutPrefix(line, "Portal: ")
		if !ok {
			return nil, fmt.Errorf("tgtadm portal show, line %d %q: unexpected", n+1, line)
		}
		if i := strings.LastIndex(rest, ","); i >= 0 {
			rest = rest[:i]
		}
		portals = append(portals, rest)
	}
	return portals, nil
}
