//! `spar-load`: a load harness for Spar.
//!
//! ```text
//!   scenario ──► config directory (one file per service) ──► spar serve --config DIR
//!                      ▲ change: file edits (endpoint, VirtualService, churn)   │ ADS
//!   bench ─────────────┘        client: N simulated sidecars ◄──────────────────┘
//!     (starts spar, reads its RSS and log, drives the client, prints one table)
//! ```
//!
//! * [`client`]: simulated sidecars that open ADS streams (SotW or delta), send node
//!   metadata like a real sidecar, subscribe like Envoy (CDS and LDS wildcard, then EDS for
//!   the EDS clusters and RDS for the route configs the listeners name), decode, ACK (or
//!   NACK on demand) and timestamp every response.
//! * [`scenario`]: synthetic meshes written as config directories, and changes written
//!   as file edits.
//! * [`bench`](mod@bench): the scale benchmark of issue 7 (RSS, convergence, reconnect storm).

pub mod bench;
pub mod bigread;
pub mod client;
pub mod envoys;
pub mod grpc;
pub mod procfs;
pub mod scenario;
pub mod stats;
