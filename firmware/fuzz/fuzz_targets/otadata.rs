//! otadata: decoding is lossless, the active entry is bootable and has the highest sequence
//! number, and what `select`, `confirm` and `invalidate` write does what they promise.
#![no_main]
use firmware::format::otadata::{ENTRY_LEN, ImageState, OtaData};
use libfuzzer_sys::fuzz_target;

fn apply(data: &OtaData, (sector, entry): (usize, firmware::format::otadata::OtaEntry)) -> OtaData {
    let mut next = *data;
    next.entries[sector] = entry;
    next
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 * ENTRY_LEN + 2 {
        return;
    }
    let (sectors, params) = data.split_at(2 * ENTRY_LEN);
    let s0: [u8; ENTRY_LEN] = sectors[..ENTRY_LEN].try_into().expect("32 bytes");
    let s1: [u8; ENTRY_LEN] = sectors[ENTRY_LEN..].try_into().expect("32 bytes");
    let ota = OtaData::from_sectors(&s0, &s1);
    assert_eq!(ota.entries[0].to_bytes(), s0, "decoding lost bytes");
    assert_eq!(ota.entries[1].to_bytes(), s1, "decoding lost bytes");

    let slot_count = params[0] % 16 + 1;
    let slot = params[1] % slot_count;
    if let Some(active) = ota.active() {
        let entry = ota.entries[active];
        assert!(entry.is_bootable());
        let other = ota.entries[1 - active];
        assert!(!other.is_bootable() || other.seq <= entry.seq);
        assert_eq!(ota.boot_slot(slot_count), Some(entry.slot(slot_count)));
    } else {
        assert_eq!(ota.boot_slot(slot_count), None);
    }

    let state = [
        ImageState::New,
        ImageState::PendingVerify,
        ImageState::Valid,
        ImageState::Undefined,
    ][usize::from(params.get(2).copied().unwrap_or(0) % 4)];
    if let Some(write) = ota.select(slot, slot_count, state) {
        if let Some(active) = ota.active() {
            assert_ne!(write.0, active, "select overwrote the active entry");
        }
        let next = apply(&ota, write);
        assert_eq!(
            next.boot_slot(slot_count),
            Some(slot),
            "select did not switch to {slot}"
        );
    } else {
        // Only a sequence number near u32::MAX leaves no room.
        let active = ota
            .active()
            .expect("select without an active entry always succeeds");
        assert!(ota.entries[active].seq > u32::MAX - 2 * u32::from(slot_count));
    }
    if let Some(write) = ota.confirm() {
        let next = apply(&ota, write);
        assert_eq!(next.active(), ota.active());
        assert_eq!(next.boot_slot(slot_count), ota.boot_slot(slot_count));
        assert_eq!(next.entries[write.0].image_state(), ImageState::Valid);
    }
    if let Some(write) = ota.invalidate() {
        let next = apply(&ota, write);
        assert!(!next.entries[write.0].is_bootable());
        assert_ne!(next.active(), ota.active());
    }
});
