//! The `firmware` binary: the OTA core running on an ESP32-C3 or a classic ESP32.
//!
//! This file only brings the hardware up and hands it to the driver loop in
//! `board/driver.rs`. Every decision about the update (what to fetch, where to
//! write it, when to retry, which LED pattern to show, when to reboot) is the
//! core's (`firmware::machine::Updater`); the glue moves bytes between the core
//! and the hardware.
//!
//! ```text
//!   esp-hal init ─► heap ─► esp-rtos (embassy) ─► FlashStorage ─► Updater::new
//!        │                                                            │
//!        └─► WIFI, GPIO, RNG kept for the driver ──────────────► driver::run (never returns)
//! ```
#![no_std]
#![no_main]

#[cfg(not(any(feature = "esp32c3", feature = "esp32")))]
compile_error!("the board binary needs a chip feature: `--features esp32c3` or `--features esp32`");

extern crate alloc;

#[path = "../board/mod.rs"]
mod board;

use embassy_executor::Spawner;
use esp_backtrace as _;
use esp_hal::clock::CpuClock;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use static_cell::StaticCell;

// The image's `esp_app_desc_t`. Its version field is what the core reads back as "the
// running version": `FIRMWARE_VERSION` at build time, else the crate's version (build.rs).
// The other fields are the macro's defaults.
esp_bootloader_esp_idf::esp_app_desc!(
    env!("FIRMWARE_VERSION"),
    env!("CARGO_PKG_NAME"),
    esp_bootloader_esp_idf::BUILD_TIME,
    esp_bootloader_esp_idf::BUILD_DATE,
    esp_bootloader_esp_idf::ESP_IDF_COMPATIBLE_VERSION,
    esp_bootloader_esp_idf::MMU_PAGE_SIZE,
    0,
    u16::MAX,
    esp_bootloader_esp_idf::SECURE_VERSION
);

#[esp_hal::main]
async fn main(spawner: Spawner) -> ! {
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));

    // Heap for the WiFi driver, mbedtls (two 16 KiB TLS record buffers per
    // session plus the parsed CA chain) and the MQTT client. The update path of
    // the core allocates nothing.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: 96 * 1024);

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    // True random numbers (RNG + ADC noise) for the TLS stack and the core's
    // jitter seed. The source lives for the whole program.
    static TRNG_SOURCE: StaticCell<TrngSource<'static>> = StaticCell::new();
    TRNG_SOURCE.init(TrngSource::new(peripherals.RNG, peripherals.ADC1));
    let trng = Trng::try_new().expect("TRNG source is alive");
    let seed = (u64::from(trng.random()) << 32) | u64::from(trng.random());

    let flash = esp_storage::FlashStorage::new(peripherals.FLASH);

    board::driver::run(
        spawner,
        board::driver::Hardware {
            flash,
            wifi: peripherals.WIFI,
            trng,
            seed,
        },
    )
    .await
}
