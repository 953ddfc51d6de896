//! The policy core's keys encode to the bytes the datapath reads.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code states expectations by panicking"
)]

#[test]
fn key_bytes_put_the_port_in_network_order() {
    let k = policy_compiler::EntryKey {
        identity: 300,
        direction: 1,
        protocol: 6,
        port: 0x1f90,
        prefixlen: 96,
    }
    .to_abi(4242);
    let b = k.to_bytes();
    assert_eq!(&b[0..4], &96u32.to_ne_bytes());
    assert_eq!(&b[4..8], &4242u32.to_ne_bytes());
    assert_eq!(&b[8..12], &300u32.to_ne_bytes());
    assert_eq!(b[12], 1);
    assert_eq!(b[13], 6);
    assert_eq!(&b[14..16], &[0x1f, 0x90], "8080 big-endian");
}
