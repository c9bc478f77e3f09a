//! Partition table: an accepted table has aligned, non-overlapping partitions and survives
//! being written and read back unchanged (and the written bytes are a fixed point).
#![no_main]
use firmware::format::partition::{PartitionTable, TABLE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = PartitionTable::parse(data) else {
        return;
    };
    let parts = table.partitions();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.offset % 0x1000, 0);
        assert!(p.size > 0);
        for q in &parts[..i] {
            assert!(
                p.offset >= q.end() || q.offset >= p.end(),
                "overlap accepted"
            );
        }
    }
    let mut written = [0u8; TABLE_LEN];
    if table.write(&mut written).is_err() {
        // Only a table too long for the area with its MD5 entry cannot be written back.
        assert!((parts.len() + 1) * 32 > TABLE_LEN);
        return;
    }
    let again = PartitionTable::parse(&written).expect("a written table parses");
    assert_eq!(again.partitions(), parts);
    assert_eq!(again.has_md5, table.has_md5);
    let mut rewritten = [0u8; TABLE_LEN];
    again.write(&mut rewritten).expect("writes again");
    assert_eq!(rewritten, written, "write is not a fixed point");
    // When the input was a canonical table area, the bytes are the same too.
    if data.len() == TABLE_LEN && data == written {
        assert_eq!(&written[..], data);
    }
});
