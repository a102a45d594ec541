//! The IKE message parser on arbitrary bytes: never panics, and whatever
//! parses as a plain message re-emits to bytes that parse to the same thing.
#![no_main]
use anyhub_ike::wire::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::parse(data) else { return };
    if msg.encrypted.is_none() {
        let again = msg.emit();
        let reparsed = Message::parse(&again).expect("our own emit must parse");
        assert_eq!(reparsed.payloads, msg.payloads);
    }
});
