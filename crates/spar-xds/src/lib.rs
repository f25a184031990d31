//! spar-xds
