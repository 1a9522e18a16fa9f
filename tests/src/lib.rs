//! obr-tests: what it takes to test obr from the outside, as a browser, an
//! admin and an operator would — plus the scripted demo (`obr-demo`).
//!
//! Nothing here stands in for an obr component: every test drives the real
//! relay, signer and agent (as processes, or in-process through their
//! public `run` entry points), and plays only the parts that are *not*
//! ours: the browser's CTAPHID client ([`hid_client`]), the relying party
//! ([`rp`], with webauthn-rs), the admin's HTTP calls ([`api`]), a private
//! `redis-server` ([`redis_server`]) and python-fido2 ([`python`]).
//!
//! - [`guest`] — boot a throwaway QEMU guest with `/dev/uhid`, and [`real_clients`] —
//!   what runs inside it: libfido2's tools and headless Chromium against the agent's uhid key.
//! - [`raw_agent`] — a hand-driven agent socket for hostile peers.
//! - [`processes`] — start relay/signer/agent binaries on free ports in a
//!   scratch directory, wait until they are ready, stop them on drop.
//! - [`registrations`] — steady registrations through an agent, counted.

pub mod api;
pub mod browser;
pub mod database_writer;
pub mod guest;
pub mod hid_client;
pub mod pki;
pub mod postgres;
pub mod processes;
pub mod python;
pub mod raw_agent;
pub mod real_clients;
pub mod redis_server;
pub mod registrations;
pub mod rp;
pub mod scratch;
