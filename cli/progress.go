package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// progress shows how far a backup (or restore) has come: on a terminal a
// bar redrawn in place with throughput and ETA, otherwise a plain line at
// most every `every`, and always a last line at the end.
type progress struct {
	w     io.Writer
	tty   bool
	width int // terminal columns; 0 when unknown
	now   func() time.Time
	every time.Duration
	label string // "backup 1f0e… (nightly)"

	start    time.Time
	lastLine time.Time
	samples  []sample // the recent (time, bytes) pairs the rate comes from
	drawn    bool     // a bar is on the terminal's current line
}

type sample struct {
	t    time.Time
	done int64
}

// rateWindow is how far back the throughput looks.
const rateWindow = 10 * time.Second

func (a *app) newProgress(label string) *progress {
	w := a.progressOut()
	p := &progress{w: w, tty: a.isTerminal(w), now: a.now, every: a.lineEvery, label: label}
	if p.tty {
		p.width = a.termWidth(w)
	}
	return p
}

// update shows status with done of total bytes (total 0: not known yet).
func (p *progress) update(status string, done, total int64) {
	now := p.now()
	if p.start.IsZero() {
		p.start = now
	}
	if total > 0 { // the time before the work starts is not throughput
		p.record(now, done)
	}
	if p.tty {
		fmt.Fprint(p.w, "\r"+p.fit(p.barLine(status, done, total, now))+"\x1b[K")
		p.drawn = true
		return
	}
	if !p.lastLine.IsZero() && now.Sub(p.lastLine) < p.every {
		return
	}
	p.lastLine = now
	fmt.Fprintln(p.w, p.plainLine(status, done, total, now))
}

// finish shows the end: the final state and, when bytes moved, the
// average throughput.
func (p *progress) finish(status string, done, total int64) {
	now := p.now()
	if p.start.IsZero() {
		p.start = now
	}
	elapsed := now.Sub(p.start)
	line := fmt.Sprintf("%s: %s after %s", p.label, status, humanDuration(elapsed))
	if total > 0 && done > 0 {
		line = fmt.Sprintf("%s: %s, %s in %s", p.label, status, humanBytes(done), humanDuration(elapsed))
		if elapsed >= time.Second {
			line += fmt.Sprintf(" (%s/s average)", humanBytes(int64(float64(done)/elapsed.Seconds())))
		}
	}
	if p.tty {
		fmt.Fprint(p.w, "\r"+p.fit(line)+"\x1b[K\n")
		p.drawn = false
		return
	}
	fmt.Fprintln(p.w, line)
}

// abandon ends a bar that is on the screen, so that the next message
// starts on a line of its own.
func (p *progress) abandon() {
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}

// record keeps (now, done) and drops the samples the rate no longer needs.
func (p *progress) record(now time.Time, done int64) {
	p.samples = append(p.samples, sample{now, done})
	i := 0
	for i < len(p.samples)-2 && now.Sub(p.samples[i+1].t) >= rateWindow {
		i++
	}
	p.samples = p.samples[i:]
}

// rate is the throughput over the recent samples in bytes per second; 0
// while unknown.
func (p *progress) rate() float64 {
	if len(p.samples) < 2 {
		return 0
	}
	first, last := p.samples[0], p.samples[len(p.samples)-1]
	dt := last.t.Sub(first.t).Seconds()
	if dt <= 0 || last.done <= first.done {
		return 0
	}
	return float64(last.done-first.done) / dt
}

// figures are the parts both forms show: percent, bytes, rate and ETA.
func (p *progress) figures(done, total int64) (pct int64, bytes, rate, eta string) {
	pct = min(max(done*100/total, 0), 100)
	bytes = humanBytes(done) + " / " + humanBytes(total)
	rate, eta = "-- B/s", "--"
	if r := p.rate(); r > 0 {
		rate = humanBytes(int64(r)) + "/s"
		eta = humanDuration(time.Duration(float64(max(total-done, 0)) / r * float64(time.Second)))
	}
	return pct, bytes, rate, eta
}

// barWidth is the bar's width in characters, between the brackets.
const barWidth = 30

func (p *progress) barLine(status string, done, total int64, now time.Time) string {
	if total <= 0 {
		return fmt.Sprintf("%s  %s  %s", p.label, status, humanDuration(now.Sub(p.start)))
	}
	pct, bytes, rate, eta := p.figures(done, total)
	rest := fmt.Sprintf(" %3d%%  %s  %s  ETA %s", pct, bytes, rate, eta)
	w := barWidth
	if p.width > 0 {
		// Leave the label, the brackets, the figures and one column.
		w = min(w, p.width-len(p.label)-len(rest)-4)
	}
	if w < 10 {
		return p.label + rest
	}
	return p.label + " " + bar(pct, w) + rest
}

// bar is [=====>    ] with pct of w filled.
func bar(pct int64, w int) string {
	filled := int(pct) * w / 100
	var b strings.Builder
	b.WriteByte('[')
	b.WriteString(strings.Repeat("=", filled))
	if filled < w {
		b.WriteByte('>')
		b.WriteString(strings.Repeat(" ", w-filled-1))
	}
	b.WriteByte(']')
	return b.String()
}

func (p *progress) plainLine(status string, done, total int64, now time.Time) string {
	if total <= 0 {
		return fmt.Sprintf("%s: %s (%s)", p.label, status, humanDuration(now.Sub(p.start)))
	}
	pct, bytes, rate, eta := p.figures(done, total)
	return fmt.Sprintf("%s: %s %d%% (%s, %s, ETA %s)", p.label, status, pct, bytes, rate, eta)
}

// fit cuts a line to the terminal's width, so that \r redraws it.
func (p *progress) fit(line string) string {
	if p.width > 1 && len(line) > p.width-1 {
		return line[:p.width-1]
	}
	return line
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// termWidth is w's terminal width in columns, 0 when unknown.
func termWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}
