package sqlite

import (
	"testing"

	"github.com/drover/drover/internal/store/storetest"
)

func TestServerContract(t *testing.T) {
	storetest.RunServer(t, func(t *testing.T) storetest.ServerStore { return openTemp(t).(*Store) })
}
