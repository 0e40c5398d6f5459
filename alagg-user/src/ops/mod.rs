//! What an operator sees of a running alagg: a [`snapshot`] of every counter, rendered as the
//! `alagg status` [`text`] and as Prometheus text or OpenMetrics ([`prometheus`], through
//! `prometheus-client`), served over the Unix [`control`]
//! socket and the optional HTTP [`metrics`] endpoint ([`serve`]: their accept loop); the service
//! manager is told of readiness, status and liveness through [`notify`].

pub mod control;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod prometheus;
pub(crate) mod serve;
pub mod snapshot;
pub(crate) mod text;
