//! Cloud provider ranges: AWS's published `ip-ranges.json`, and the one table
//! that says which jurisdiction each cloud region is in (a region's name is not
//! its jurisdiction: eu-west-2 is London, eu-central-2 is Zurich).

use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    Country, RegionError,
    ranges::{self, RangeMap},
};

/// AWS region → ISO country of the data centres, as of 2026-11-01. Regions not
/// listed (and `GLOBAL`, e.g. CloudFront edge ranges) have no single
/// jurisdiction: their prefixes are left to the country dataset.
pub const AWS_REGIONS: &[(&str, &str)] = &[
    ("af-south-1", "ZA"),
    ("ap-east-1", "HK"),
    ("ap-east-2", "TW"),
    ("ap-northeast-1", "JP"),
    ("ap-northeast-2", "KR"),
    ("ap-northeast-3", "JP"),
    ("ap-south-1", "IN"),
    ("ap-south-2", "IN"),
    ("ap-southeast-1", "SG"),
    ("ap-southeast-2", "AU"),
    ("ap-southeast-3", "ID"),
    ("ap-southeast-4", "AU"),
    ("ap-southeast-5", "MY"),
    ("ap-southeast-7", "TH"),
    ("ca-central-1", "CA"),
    ("ca-west-1", "CA"),
    ("cn-north-1", "CN"),
    ("cn-northwest-1", "CN"),
    ("eu-central-1", "DE"),
    ("eu-central-2", "CH"),
    ("eu-north-1", "SE"),
    ("eu-south-1", "IT"),
    ("eu-south-2", "ES"),
    ("eu-west-1", "IE"),
    ("eu-west-2", "GB"),
    ("eu-west-3", "FR"),
    ("eusc-de-east-1", "DE"),
    ("il-central-1", "IL"),
    ("me-central-1", "AE"),
    ("me-south-1", "BH"),
    ("mx-central-1", "MX"),
    ("sa-east-1", "BR"),
    ("us-east-1", "US"),
    ("us-east-2", "US"),
    ("us-gov-east-1", "US"),
    ("us-gov-west-1", "US"),
    ("us-west-1", "US"),
    ("us-west-2", "US"),
];

/// The jurisdiction of an AWS region.
pub fn aws_region_country(region: &str) -> Option<Country> {
    AWS_REGIONS
        .iter()
        .find(|(r, _)| *r == region)
        .and_then(|(_, c)| Country::parse(c))
}

/// A cloud prefix's region and its jurisdiction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudRegion {
    pub provider: &'static str,
    pub region: String,
    pub country: Country,
}

#[derive(Deserialize)]
struct AwsFile {
    #[serde(rename = "createDate", default)]
    create_date: String,
    #[serde(default)]
    prefixes: Vec<AwsV4>,
    #[serde(default)]
    ipv6_prefixes: Vec<AwsV6>,
}

#[derive(Deserialize)]
struct AwsV4 {
    ip_prefix: IpNet,
    region: String,
}

#[derive(Deserialize)]
struct AwsV6 {
    ipv6_prefix: IpNet,
    region: String,
}

/// Cloud ranges with longest-prefix semantics among themselves.
#[derive(Debug, Clone, Default)]
pub struct CloudRanges {
    pub map: RangeMap<CloudRegion>,
    /// `createDate` of each file read.
    pub versions: Vec<String>,
    /// Prefixes skipped because their region has no single jurisdiction.
    pub skipped: usize,
    /// Those regions, by name (e.g. "GLOBAL", or a region newer than this
    /// build's table), for the log.
    pub unknown_regions: Vec<String>,
    /// Prefixes written with host bits set ("3.5.140.7/22"), used as their
    /// network: a file a user would want to hear about.
    pub host_bits: usize,
}

/// Reads an AWS `ip-ranges.json`.
pub fn load_aws(path: &Path) -> Result<CloudRanges, RegionError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegionError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_aws(path, &text)
}

/// Parses AWS `ip-ranges.json` text (`path` for messages).
pub fn parse_aws(path: &Path, text: &str) -> Result<CloudRanges, RegionError> {
    let file: AwsFile = serde_json::from_str(text).map_err(|e| RegionError::Format {
        path: path.to_owned(),
        msg: format!(
            "not AWS ip-ranges.json: {e} (line {}, column {})",
            e.line(),
            e.column()
        ),
    })?;
    let mut skipped = 0;
    let mut unknown_regions = std::collections::BTreeSet::new();
    let mut host_bits = 0;
    let mut prefixes = Vec::new();
    let all = file
        .prefixes
        .into_iter()
        .map(|p| (p.ip_prefix, p.region))
        .chain(
            file.ipv6_prefixes
                .into_iter()
                .map(|p| (p.ipv6_prefix, p.region)),
        );
    for (net, region) in all {
        let Some(country) = aws_region_country(&region) else {
            skipped += 1;
            unknown_regions.insert(region);
            continue;
        };
        if net.trunc() != net {
            host_bits += 1;
        }
        let net = net.trunc();
        let (start, end) = ranges::net_range(&net);
        let len = 128
            - (end - start)
                .checked_add(1)
                .map_or(128, |n| n.trailing_zeros()) as u8;
        prefixes.push((
            start,
            len,
            CloudRegion {
                provider: "aws",
                region,
                country,
            },
        ));
    }
    Ok(CloudRanges {
        map: RangeMap::from_prefixes(prefixes),
        versions: vec![file.create_date],
        skipped,
        unknown_regions: unknown_regions.into_iter().collect(),
        host_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_not_jurisdictions() {
        assert_eq!(aws_region_country("eu-west-2").unwrap().as_str(), "GB");
        assert_eq!(aws_region_country("eu-central-2").unwrap().as_str(), "CH");
        assert_eq!(aws_region_country("GLOBAL"), None);
    }

    #[test]
    fn nested_prefixes_use_longest_match() {
        let json = r#"{"syncToken":"1","createDate":"2026-11-01-00-00-00",
          "prefixes":[{"ip_prefix":"52.0.0.0/8","region":"us-east-1","service":"AMAZON","network_border_group":"us-east-1"},
                      {"ip_prefix":"52.94.0.0/16","region":"eu-west-2","service":"AMAZON","network_border_group":"eu-west-2"},
                      {"ip_prefix":"54.0.0.0/8","region":"GLOBAL","service":"CLOUDFRONT","network_border_group":"GLOBAL"}],
          "ipv6_prefixes":[{"ipv6_prefix":"2a05:d000::/25","region":"eu-central-2","service":"AMAZON","network_border_group":"eu-central-2"}]}"#;
        let c = parse_aws(Path::new("ip-ranges.json"), json).unwrap();
        let at = |s: &str| {
            c.map
                .get(ranges::addr(s.parse().unwrap()))
                .map(|r| r.country.as_str().to_owned())
        };
        assert_eq!(at("52.1.2.3").as_deref(), Some("US"));
        assert_eq!(at("52.94.1.1").as_deref(), Some("GB"));
        assert_eq!(at("54.1.1.1"), None);
        assert_eq!(at("2a05:d000::1").as_deref(), Some("CH"));
        assert_eq!(c.skipped, 1);
    }

    #[test]
    fn bad_json_says_where() {
        let e = parse_aws(Path::new("x.json"), "{\"prefixes\": [1]}")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.json: not AWS ip-ranges.json"), "{e}");
    }

    #[test]
    fn host_bits_and_unknown_regions_are_counted_for_the_log() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fuzz/corpus/aws/small.json"),
        )
        .unwrap();
        let c = parse_aws(std::path::Path::new("aws.json"), &text).unwrap();
        assert_eq!(c.host_bits, 1, "3.5.141.7/22");
        assert_eq!(c.skipped, 1);
        assert_eq!(c.unknown_regions, vec!["GLOBAL".to_owned()]);
    }
}
