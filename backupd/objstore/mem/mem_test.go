package mem_test

import (
	"testing"

	"github.com/bulkhead-io/bulkhead/backupd/objstore"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/mem"
	"github.com/bulkhead-io/bulkhead/backupd/objstore/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) objstore.Store { return mem.New(t.Name()) })
}
