//! The offline default region dataset (fetched by `cargo xtask setup`): it loads,
//! says where it came from, and places well-known addresses where they are.

use std::net::IpAddr;

use sensor_user::regions::{self, default_dataset};

#[test]
fn default_dataset_loads_with_provenance_and_known_places() {
    let dir = regions::default_dir();
    let db = regions::RegionDb::load_default(&dir).unwrap_or_else(|e| {
        panic!("the default region dataset is missing or unreadable ({e}): run `cargo xtask setup`")
    });
    let p = db.provenance.as_ref().expect("provenance");
    assert_eq!(p.version, default_dataset::VERSION);
    assert!(p.attribution.contains("NRO"));
    assert!(
        db.countries.len() > 400_000,
        "both families: {}",
        db.countries.len()
    );
    for (ip, cc) in [("1.0.0.1", "AU"), ("1.0.1.1", "CN"), ("2a01:4f8::1", "DE")] {
        let ip: IpAddr = ip.parse().expect("ip");
        assert_eq!(
            db.country(ip).map(|c| c.to_string()).as_deref(),
            Some(cc),
            "{ip}"
        );
    }
    // Private space is nobody's country.
    assert_eq!(db.country("10.1.2.3".parse().expect("ip")), None);
}
