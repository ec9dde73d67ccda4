//! Commands around the daemon, none of them on its path: the [`demo`] with its
//! [`embedded`] servers, [`resync`] (rewind the group after Redis lost its data), the
//! producer side ([`publish`]: events validated with the daemon's decoder, sent with the
//! right key), and the [`bench`]mark.

pub mod bench;
pub mod demo;
pub mod embedded;
pub mod publish;
pub mod reindex;
pub mod resync;
pub mod verify;
