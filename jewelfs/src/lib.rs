//! The JewelFS client: `~/Jewel` as a FUSE drive synced through the JewelFS service.
//!
//! - [`core`]: the FUSE-free async core (tree cache, block cache, upload journal, uploader,
//!   change listener, conflict naming), tested without mounting;
//! - [`fuse`]: the thin `fuser` adapter;
//! - [`login`]: `login`, linking this machine with a code;
//! - [`devices`]: `devices`, the account's machines (list, unlink);
//! - [`mount`]: the commands (`mount`, `unmount`, `status`) that `main.rs` parses;
//! - [`status`]: how a running mount publishes its status (a file, a socket);
//! - [`service`]: `service install` / `uninstall`, the systemd user unit that mounts at login;
//! - [`versions`]: `versions` and `restore-version`, a file's earlier contents.

pub mod core;
pub mod devices;
pub mod fuse;
pub mod login;
pub mod mount;
pub mod service;
pub mod status;
pub mod versions;
