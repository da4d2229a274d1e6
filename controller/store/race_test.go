package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/controller/store"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

// event is one operation that won its compare-and-swap.
type event struct {
	version  int64
	name     string
	t        model.Transition
	instance string // attach: added; detach: removed
}

// TestRace fires conflicting operations at one volume from many goroutines
// and checks that the winners form a legal history: ordered by the version
// each one wrote, every operation was allowed in the state left by the
// ones before it, and replaying them yields the final stored state.
func TestRace(t *testing.T) {
	engines(t, 0, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		newVolume(t, st, "vol", "available", "", false)
		var (
			mu        sync.Mutex
			events    []event
			instances sync.Map // attachment id -> instance
			nextAtt   atomic.Int64
			rejected  atomic.Int64
		)
		record := func(e event, err error) {
			if err != nil {
				if !errdefs.Is(err, errdefs.ErrInvalid) && !errdefs.Is(err, errdefs.ErrNotFound) {
					t.Errorf("%s: unexpected error kind: %v", e.name, err)
				}
				rejected.Add(1)
				return
			}
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}
		pickAttachment := func(r *rand.Rand) (string, string, bool) {
			atts, err := st.ListAttachments(ctx, "", "vol")
			if err != nil {
				t.Error(err)
				return "", "", false
			}
			if len(atts) == 0 {
				return "", "", false
			}
			a := atts[r.IntN(len(atts))]
			return a.ID, a.InstanceUUID, true
		}
		undelete := model.Transition{Op: "undelete", Status: []string{model.StatusDeleting}, SetStatus: model.StatusAvailable}
		simple := []struct {
			name string
			t    func(r *rand.Rand) model.Transition
		}{
			{"delete", func(*rand.Rand) model.Transition { return model.BeginDelete() }},
			{"undelete", func(*rand.Rand) model.Transition { return undelete }},
			{"backup", func(r *rand.Rand) model.Transition { return model.BeginBackup(r.IntN(2) == 0) }},
			{"finish backup", func(r *rand.Rand) model.Transition { return model.FinishBackup(r.IntN(4) > 0) }},
			{"restore", func(*rand.Rand) model.Transition { return model.BeginRestore() }},
			{"finish restore", func(r *rand.Rand) model.Transition { return model.FinishRestore(r.IntN(4) > 0) }},
			{"extend", func(*rand.Rand) model.Transition { return model.BeginExtend(1000) }},
			{"finish extend", func(r *rand.Rand) model.Transition { return model.FinishExtend(int64(2 + r.IntN(5))) }},
			{"migrate", func(*rand.Rand) model.Transition { return model.BeginMigrate() }},
			{"finish migrate", func(r *rand.Rand) model.Transition { return model.FinishMigrate(r.IntN(2) == 0) }},
		}
		const workers, rounds = 8, 120
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(w), 42))
				for range rounds {
					switch k := r.IntN(len(simple) + 3); k {
					case len(simple): // attach
						id := fmt.Sprintf("att-%d", nextAtt.Add(1))
						inst := fmt.Sprintf("inst-%d", r.IntN(3))
						instances.Store(id, inst)
						v, err := st.CreateAttachment(ctx, &model.Attachment{ID: id, VolumeID: "vol", ProjectID: "p1", InstanceUUID: inst})
						record(event{v, "attach", model.Reserve(inst), inst}, err)
					case len(simple) + 1: // complete an attachment
						if id, _, ok := pickAttachment(r); ok {
							v, err := st.CompleteAttachment(ctx, id)
							record(event{version: v, name: "complete", t: model.CompleteAttach()}, err)
						}
					case len(simple) + 2: // detach
						if id, inst, ok := pickAttachment(r); ok {
							v, err := st.DeleteAttachment(ctx, id)
							record(event{v, "detach", model.Detach(), inst}, err)
						}
					default:
						op := simple[k]
						tr := op.t(r)
						v, err := st.Transition(ctx, "vol", tr)
						record(event{version: v, name: op.name, t: tr}, err)
					}
				}
			}()
		}
		wg.Wait()

		sort.Slice(events, func(i, j int) bool { return events[i].version < events[j].version })
		s := model.State{Status: model.StatusAvailable, SizeGiB: 1}
		for i, e := range events {
			if want := int64(i + 2); e.version != want {
				t.Fatalf("event %d (%s) has version %d, want %d: two operations won the same state, or a write skipped the version", i, e.name, e.version, want)
			}
			if err := e.t.Check(s); err != nil {
				t.Fatalf("illegal history at version %d: %s won in state %+v: %v", e.version, e.name, s, err)
			}
			switch e.name {
			case "attach":
				s = e.t.Apply(s, 0)
				s.Instances = append(s.Instances, e.instance)
			case "detach":
				i := slices.Index(s.Instances, e.instance)
				s.Instances = slices.Delete(s.Instances, i, i+1)
				s = e.t.Apply(s, len(s.Instances))
			default:
				s = e.t.Apply(s, len(s.Instances))
			}
		}
		got, err := st.VolumeState(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got.Instances)
		slices.Sort(s.Instances)
		if got.Status != s.Status || got.BackupStatus != s.BackupStatus || got.MigrationStatus != s.MigrationStatus ||
			got.SizeGiB != s.SizeGiB || !slices.Equal(got.Instances, s.Instances) {
			t.Fatalf("stored state %+v, replayed model %+v", got, s)
		}
		t.Logf("%d operations won, %d were rejected; final %s/%q", len(events), rejected.Load(), s.Status, s.BackupStatus)
		if len(events) < 50 {
			t.Errorf("only %d operations won; the race exercised too little", len(events))
		}
	})
}
