package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/bulkhead-io/bulkhead/controller/model"
	"github.com/bulkhead-io/bulkhead/internal/errdefs"
)

const serviceSelect = `SELECT id, svc_binary, host, address, zone, disabled, disabled_reason, capacity_bytes, free_bytes,
	topology, initiator_iqn, last_heartbeat, created_at, updated_at FROM services`

func scanService(sc scanner) (*model.Service, error) {
	sv := &model.Service{}
	var disabled int
	var topo, hb, created, updated string
	if err := sc.Scan(&sv.ID, &sv.Binary, &sv.Host, &sv.Address, &sv.Zone, &disabled, &sv.DisabledReason, &sv.CapacityBytes,
		&sv.FreeBytes, &topo, &sv.InitiatorIQN, &hb, &created, &updated); err != nil {
		return nil, err
	}
	sv.Disabled = disabled != 0
	_ = json.Unmarshal([]byte(topo), &sv.Topology)
	sv.LastHeartbeat, sv.CreatedAt, sv.UpdatedAt = parseTime(hb), parseTime(created), parseTime(updated)
	return sv, nil
}

// RegisterService records (or refreshes) a daemon by binary and host and
// counts the registration as a heartbeat. It is idempotent.
func (s *Store) RegisterService(ctx context.Context, sv *model.Service) error {
	now := fmtTime(s.now())
	if sv.Zone == "" {
		sv.Zone = "nova"
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO services (svc_binary, host, address, zone, capacity_bytes, free_bytes,
		topology, initiator_iqn, last_heartbeat, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)
		ON CONFLICT (svc_binary, host) DO UPDATE SET address = excluded.address, zone = excluded.zone,
		capacity_bytes = excluded.capacity_bytes, free_bytes = excluded.free_bytes, topology = excluded.topology,
		initiator_iqn = excluded.initiator_iqn, last_heartbeat = excluded.last_heartbeat, updated_at = excluded.updated_at`),
		sv.Binary, sv.Host, sv.Address, sv.Zone, sv.CapacityBytes, sv.FreeBytes, jsonText(sv.Topology), sv.InitiatorIQN, now, now, now)
	if err != nil {
		return fmt.Errorf("register %s on %s: %w", sv.Binary, sv.Host, err)
	}
	return nil
}

// Heartbeat refreshes a registered daemon's liveness and capacity. It
// returns ErrNotFound when the daemon is not registered, so it re-registers.
func (s *Store) Heartbeat(ctx context.Context, binary, host string, capacity, free int64) error {
	now := fmtTime(s.now())
	res, err := s.db.ExecContext(ctx, s.q("UPDATE services SET last_heartbeat = ?, capacity_bytes = ?, free_bytes = ?, updated_at = ? WHERE svc_binary = ? AND host = ?"),
		now, capacity, free, now, binary, host)
	return affectedOne(res, err, "service", binary+"@"+host)
}

// GetService returns the daemon binary on host, or ErrNotFound.
func (s *Store) GetService(ctx context.Context, binary, host string) (*model.Service, error) {
	sv, err := scanService(s.db.QueryRowContext(ctx, s.q(serviceSelect+" WHERE svc_binary = ? AND host = ?"), binary, host))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: service %s on host %s could not be found", errdefs.ErrNotFound, binary, host)
	}
	return sv, err
}

// ListServices returns registered daemons, of one binary when it is set.
func (s *Store) ListServices(ctx context.Context, binary string) ([]*model.Service, error) {
	query, args := serviceSelect, []any{}
	if binary != "" {
		query, args = query+" WHERE svc_binary = ?", append(args, binary)
	}
	return queryAll(ctx, s.db, scanService, s.q(query+" ORDER BY svc_binary, host"), args...)
}

// SetServiceDisabled enables or disables scheduling onto a daemon.
func (s *Store) SetServiceDisabled(ctx context.Context, binary, host string, disabled bool, reason string) error {
	res, err := s.db.ExecContext(ctx, s.q("UPDATE services SET disabled = ?, disabled_reason = ?, updated_at = ? WHERE svc_binary = ? AND host = ?"),
		b2i(disabled), reason, fmtTime(s.now()), binary, host)
	return affectedOne(res, err, "service", binary+"@"+host)
}
