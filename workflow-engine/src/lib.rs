//! The durable saga engine: state rows, journal, leases, fencing, retries, compensation, recovery.
