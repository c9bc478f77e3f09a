# Tasks of the ESP32 OTA updater. `just --list` shows them.

fw_target_dir := env_var_or_default("CARGO_TARGET_DIR", "target")
fw_elf := fw_target_dir / "riscv32imc-unknown-none-elf/release/firmware"
fw_bin := fw_target_dir / "firmware-esp32c3.bin"
fw_elf_esp32 := fw_target_dir / "xtensa-esp32-none-elf/release/firmware"
fw_bin_esp32 := fw_target_dir / "firmware-esp32.bin"
# The version the image carries (esp_app_desc_t): FIRMWARE_VERSION, or the firmware crate's.
fw_version := env_var_or_default("FIRMWARE_VERSION", `cargo pkgid -p firmware | sed 's/.*[#@]//'`)

default:
    @just --list

# The simulator's full run: every scenario, power-cut sweeps of every workload (every shape, depth 1 and 2) and 50 random multi-cut runs.
sim:
    cargo run -p sim -- all

# The power-cut sweep of a 1 MiB update, every flash operation in every torn shape (prints crash points per second).
sweep size="1MiB":
    cargo run -p sim -- sweep --image-size {{size}}

# Every workload cut twice (every operation of every recovery), with an HTML report and a VCD of one run.
sweep-deep size="64KiB":
    cargo run -p sim -- sweep --image-size {{size}} --workload all --depth 2 --html target/sweep.html --vcd target/sweep.vcd

# One board through N boots of releases, power cuts and outages: flash wear per sector, log records lost (must be 0), violations.
soak boots="10000" seed="1":
    cargo run -p sim -- soak --boots {{boots}} --seed {{seed}}

# Every test of the workspace (host only: the board binary needs a chip feature).
test:
    cargo test --workspace

# The core really is no_std: build it for the ESP32-C3 target.
core-no-std:
    cargo build -p firmware --lib --target riscv32imc-unknown-none-elf

# Formatting and lints, as CI checks them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# An image written by the core must pass esptool's own checks (pip install esptool).
esptool-check:
    cargo run -q -p sim -- image --version 1.2.3 --size 64KiB -o target/sim-image.bin
    esptool --chip esp32c3 image-info target/sim-image.bin

# The image says it is FIRMWARE_VERSION (default: the crate's) and is also kept as firmware-esp32c3-VERSION.bin.
# Build the ESP32-C3 release image (`FIRMWARE_VERSION=1.1 just firmware`) and print its size against one OTA slot.
firmware:
    cargo build -p firmware --release --target riscv32imc-unknown-none-elf --features esp32c3
    espflash save-image -S --chip esp32c3 --partition-table firmware/partitions.csv {{fw_elf}} {{fw_bin}}
    cp {{fw_bin}} {{fw_target_dir}}/firmware-esp32c3-{{fw_version}}.bin
    @just _fw-size {{fw_bin}}

# Build the classic ESP32 (Xtensa) image: needs Espressif's toolchain (`espup install`, then `. ~/export-esp.sh`).
firmware-esp32:
    cargo +esp build -p firmware --release --target xtensa-esp32-none-elf --features esp32 \
        -Zbuild-std=core,alloc \
        --config 'target.xtensa-esp32-none-elf.rustflags=["-C","link-arg=-nostartfiles","-C","link-arg=-Wl,-Tlinkall.x"]'
    espflash save-image -S --chip esp32 --partition-table firmware/partitions.csv {{fw_elf_esp32}} {{fw_bin_esp32}}
    @just _fw-size {{fw_bin_esp32}}

# Image size, slot size (ota_0 in firmware/partitions.csv) and what is left.
_fw-size image:
    #!/usr/bin/env sh
    set -eu
    img=$(stat -c %s "{{image}}")
    slot=$(awk -F, '$1 ~ /^ota_0/ {gsub(/ /, "", $5); print $5}' firmware/partitions.csv)
    slot=$((slot))
    echo "image {{image}}: ${img} bytes; slot ota_0: ${slot} bytes; free: $((slot - img)) bytes ($(( (slot - img) * 100 / slot ))% of the slot)"
    test "$img" -le "$slot" || { echo "image does not fit the OTA slot" >&2; exit 1; }

# Flash a board: conf.json into the config partition, then bootloader, partition table and
# firmware (ota_0); otadata, otastate and otalog are erased. Then the serial console.
flash PORT: firmware
    #!/usr/bin/env sh
    set -eu
    cfg_off=$(awk -F, '$1 ~ /^config/ {gsub(/ /, "", $4); print $4}' firmware/partitions.csv)
    cfg_size=$(awk -F, '$1 ~ /^config/ {gsub(/ /, "", $5); print $5}' firmware/partitions.csv)
    cfg_size=$((cfg_size))
    len=$(stat -c %s conf.json)
    test "$len" -le 4096 || { echo "conf.json is $len bytes; the core reads at most 4096" >&2; exit 1; }
    # conf.json followed by erased flash (FF): the core reads up to the first FF.
    { cat conf.json; head -c $((cfg_size - len)) /dev/zero | tr '\000' '\377'; } > {{fw_target_dir}}/conf-partition.bin
    espflash write-bin -S --chip esp32c3 --port {{PORT}} "$cfg_off" {{fw_target_dir}}/conf-partition.bin
    espflash flash -S --chip esp32c3 --port {{PORT}} --partition-table firmware/partitions.csv \
        --erase-parts otadata,otastate,otalog {{fw_elf}}
    espflash monitor -S --chip esp32c3 --port {{PORT}}

# Serial console only (115200 baud).
console PORT:
    espflash monitor -S --chip esp32c3 --port {{PORT}}

# Mock GitHub + broker on an address a real board can reach (e.g. the host's LAN address).
serve addr="127.0.0.1:0":
    cargo run -p sim -- serve --addr {{addr}}

# Summarise a captured serial console (boots, versions, outcomes, LEDs) with the core's trace parser.
console-summary FILE:
    cargo run -q -p hil -- console {{FILE}}

# With PORT: builds firmware 1.0 and 1.1, flashes 1.0 (espflash's library), publishes 1.1 on the
# mock GitHub and runs the HIL scenario set (extra flags: --power uhubctl:1-1:2, --probe /dev/ttyUSB1,
# --junit FILE, --json). Without PORT: how to connect a board.
# Hardware in the loop: `just hil /dev/ttyACM0` runs the HIL scenario set on a board.
hil PORT="" *FLAGS:
    #!/usr/bin/env sh
    set -eu
    if [ -z "{{PORT}}" ]; then exec cargo run -q -p hil -- run; fi
    FIRMWARE_VERSION=1.1 just firmware
    FIRMWARE_VERSION=1.0 just firmware
    cargo run -q -p hil -- run --port {{PORT}} --elf {{fw_elf}} \
        --image 1.0={{fw_target_dir}}/firmware-esp32c3-1.0.bin \
        --image 1.1={{fw_target_dir}}/firmware-esp32c3-1.1.bin {{FLAGS}}

# espflash's library flashes it over the pty, every scenario runs, then every recording in fixtures/recordings.
# The same harness against the simulator's virtual ESP32-C3 behind a pty (what CI runs).
hil-virtual:
    cargo run -q -p hil -- run --virtual --quiet --junit target/hil/junit-run.xml
    cargo run -q -p hil -- replay --virtual --quiet --junit target/hil/junit-replay.xml fixtures/recordings

# Then a recording of a cut in every phase with that firmware (target/hil/recordings), replayed: what
# `just hil-replay PORT` writes to a board.
# The HIL set with your firmware 1.0/1.1 on the virtual board, flashed and published as `just hil PORT` does.
hil-virtual-firmware:
    FIRMWARE_VERSION=1.1 just firmware
    FIRMWARE_VERSION=1.0 just firmware
    cargo run -q -p hil -- run --virtual --quiet --junit target/hil/junit-firmware.xml --elf {{fw_elf}} \
        --image 1.0={{fw_target_dir}}/firmware-esp32c3-1.0.bin \
        --image 1.1={{fw_target_dir}}/firmware-esp32c3-1.1.bin
    rm -rf {{fw_target_dir}}/hil/recordings
    cargo run -q -p hil -- run --virtual --quiet --elf {{fw_elf}} --record {{fw_target_dir}}/hil/recordings \
        --image 1.0={{fw_target_dir}}/firmware-esp32c3-1.0.bin \
        --image 1.1={{fw_target_dir}}/firmware-esp32c3-1.1.bin fixtures/recordings/sources/*.toml
    cargo run -q -p hil -- replay --virtual --quiet {{fw_target_dir}}/hil/recordings

# Write recorded power cuts (made with your firmware: `just hil-virtual-firmware`) to a board and check its recovery.
hil-replay PORT recordings=(fw_target_dir / "hil/recordings") *FLAGS:
    cargo run -q -p hil -- replay --port {{PORT}} --elf {{fw_elf}} {{FLAGS}} {{recordings}}

# What a board running 1.0 would do with a repository's latest release, against the real server
# (extra flags: --from 1.1, --api-base URL, --token-env GITHUB_TOKEN, --json, --trace).
probe repo asset *flags:
    cargo run -q -p sim -- probe --repo {{repo}} --asset {{asset}} {{flags}}

# ---- Fuzzing (firmware/fuzz): libFuzzer on the stable toolchain ----
# The instrumentation cargo-fuzz asks of nightly's `-Zsanitizer=fuzzer` is only LLVM's SanitizerCoverage
# pass, which stable rustc runs through codegen options; libfuzzer-sys builds libFuzzer itself with the
# system C++ compiler. `--target` keeps these flags off build scripts and proc macros.
fuzz_target_dir := env_var_or_default("FUZZ_TARGET_DIR", "target/fuzz")
fuzz_targets := "json_tokenizer release_parser config_parser otadata partition_table app_image trace_line http_head"
fuzz_rustflags := "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"

# Build every fuzz target (instrumented, release with overflow checks and debug assertions).
fuzz-build:
    cd firmware/fuzz && CARGO_TARGET_DIR="{{absolute_path(fuzz_target_dir)}}" RUSTFLAGS="{{fuzz_rustflags}}" \
        cargo build --release --target "$(rustc -vV | sed -n 's/^host: //p')"

# Fuzz one target for SECONDS (extra libFuzzer flags, e.g. -runs=1000000); a crash is saved under
# target/fuzz/artifacts/TARGET/ and fails the recipe. Targets: json_tokenizer release_parser
# config_parser otadata partition_table app_image trace_line http_head.
fuzz TARGET SECONDS="60" *FLAGS: fuzz-build
    @just _fuzz-run {{TARGET}} {{SECONDS}} {{FLAGS}}

# Every fuzz target for SECONDS each, one after another.
fuzz-all SECONDS="60" *FLAGS: fuzz-build
    #!/usr/bin/env sh
    set -eu
    for t in {{fuzz_targets}}; do just _fuzz-run "$t" {{SECONDS}} {{FLAGS}}; done

# What CI runs: every target for 5 s (40 s of fuzzing in all, under a minute with start-up).
fuzz-ci: (fuzz-all "5")

# One libFuzzer run. The seed corpus (firmware/fuzz/corpus/TARGET) is only read; what the run
# discovers goes to target/fuzz/corpus/TARGET and is reused by the next run.
_fuzz-run TARGET SECONDS *FLAGS:
    #!/usr/bin/env sh
    set -eu
    dir="{{absolute_path(fuzz_target_dir)}}"
    bin="$dir/$(rustc -vV | sed -n 's/^host: //p')/release/{{TARGET}}"
    test -x "$bin" || { echo "no fuzz target {{TARGET}} (one of: {{fuzz_targets}})" >&2; exit 2; }
    mkdir -p "$dir/corpus/{{TARGET}}" "$dir/artifacts/{{TARGET}}"
    log="$dir/{{TARGET}}.log"
    status=0
    "$bin" -max_total_time={{SECONDS}} -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/{{TARGET}}/" {{FLAGS}} \
        "$dir/corpus/{{TARGET}}" firmware/fuzz/corpus/{{TARGET}} > "$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    echo "fuzz {{TARGET}}: ${runs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?} (log: $log)"
    if [ "$status" -ne 0 ]; then
        grep -E -A2 'panicked|Test unit written' "$log" >&2 || tail -n 30 "$log" >&2
        exit "$status"
    fi
