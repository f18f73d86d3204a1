//! Black-box HTTP tests of sdserve-server against the FakeBackend on loopback,
//! one module per concern (one test binary keeps link time down).

mod a1111;
mod a1111_discovery;
mod auth;
mod cancel;
mod common;
mod connections;
mod devices;
mod durability;
mod hires;
mod img2img;
mod limits;
mod loras;
mod memory;
mod models;
mod native;
mod openai;
mod ops;
mod overload;
mod ownership;
mod restart;
mod retention;
mod shared_bucket;
mod simple;
mod spec;
mod web;
