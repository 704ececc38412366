//! Real memcached and Redis servers for tests (started on free loopback ports).
