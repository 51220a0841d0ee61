//! Country codes and the named jurisdiction groups policies may use.
//!
//! The groups are the one documented place where "EU27", "EEA" and
//! "EU_ADEQUACY" are defined. They reflect the situation on **2026-11-01**:
//! - EU27: the member states of the European Union.
//! - EEA: EU27 plus Iceland, Liechtenstein and Norway.
//! - EU_ADEQUACY: the EEA plus the countries and territories with an EU adequacy
//!   decision under Art. 45 GDPR: Andorra, Argentina, Brazil, Canada (commercial
//!   organisations), Faroe Islands, Guernsey, Israel, Isle of Man, Japan, Jersey,
//!   New Zealand, Republic of Korea, Switzerland, the United Kingdom, the United
//!   States (organisations certified under the EU-US Data Privacy Framework only)
//!   and Uruguay. Two of these are partial (Canada, United States): a policy that
//!   must not rely on partial decisions should list countries explicitly instead.
//!
//! Review this file when the Commission adopts or withdraws a decision.

/// The date the groups reflect.
pub const GROUPS_AS_OF: &str = "2026-11-01";

/// EU member states.
pub const EU27: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

/// EEA members beyond the EU.
const EEA_EXTRA: &[&str] = &["IS", "LI", "NO"];

/// Countries and territories with an adequacy decision (beyond the EEA).
const ADEQUACY_EXTRA: &[&str] = &[
    "AD", "AR", "BR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "US", "UY",
];

/// Names of the groups, for messages.
pub const GROUP_NAMES: &[&str] = &["EU27", "EEA", "EU_ADEQUACY"];

/// The members of a named group, or `None` for an unknown name.
pub fn group(name: &str) -> Option<Vec<&'static str>> {
    match name {
        "EU27" => Some(EU27.to_vec()),
        "EEA" => Some(EU27.iter().chain(EEA_EXTRA).copied().collect()),
        "EU_ADEQUACY" => Some(
            EU27.iter()
                .chain(EEA_EXTRA)
                .chain(ADEQUACY_EXTRA)
                .copied()
                .collect(),
        ),
        _ => None,
    }
}

/// ISO 3166-1 alpha-2 codes (officially assigned), plus "EU" and "AP", which
/// the registries' data uses for ranges assigned to the EU or Asia/Pacific as a
/// whole, and "XK" (Kosovo, user-assigned but universally used).
const CODES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW EU AP XK";

/// True when `code` (upper case) is a known country code.
pub fn is_country(code: &str) -> bool {
    code.len() == 2 && CODES.split(' ').any(|c| c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_nest() {
        assert_eq!(EU27.len(), 27);
        let eea = group("EEA").unwrap();
        let adequacy = group("EU_ADEQUACY").unwrap();
        assert_eq!(eea.len(), 30);
        assert!(EU27.iter().all(|c| eea.contains(c)));
        assert!(eea.iter().all(|c| adequacy.contains(c)));
        assert!(
            adequacy.iter().all(|c| is_country(c)),
            "every member is a known code"
        );
        assert_eq!(group("EU28"), None);
    }

    #[test]
    fn codes() {
        assert!(is_country("IE"));
        assert!(is_country("NO"));
        assert!(!is_country("ie"));
        assert!(!is_country("ZZ"));
        assert!(!is_country("IRL"));
    }
}
