//! Jurisdiction rules as data (one TOML file per county or prefecture, each rule quoting the seed
//! document it comes from). This first cut carries the staffing minimums; patrol duty, deadlines and
//! fraud thresholds join it with the compliance work.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;

/// Presets shipped with the server, keyed by the jurisdiction's administrative code.
const BUILTIN: &[(&str, &str)] = &[(
    "rongjiang_522632.toml",
    include_str!("../policies/rongjiang_522632.toml"),
)];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The administrative code of the jurisdiction's root grid (county or prefecture).
    pub jurisdiction_code: String,
    pub name: String,
    pub timezone: String,
    #[serde(default)]
    pub staffing: Vec<StaffingRule>,
}

/// At least `min` people with `role` in every grid of `level`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffingRule {
    pub level: String,
    pub role: Role,
    pub min: u32,
    /// The sentence of the jurisdiction's document this rule comes from.
    pub quote: String,
}

#[derive(Debug, thiserror::Error)]
#[error("policy file {file}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub message: String,
}

pub struct Policies {
    by_code: HashMap<String, Policy>,
}

impl Policies {
    /// Parses one policy file; the error names the file, line and column.
    pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = toml::from_str(text).map_err(|e| PolicyError {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        if policy.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(PolicyError {
                file: file.into(),
                message: format!("unknown time zone {:?}", policy.timezone),
            });
        }
        Ok(policy)
    }

    pub fn builtin() -> Policies {
        let by_code = BUILTIN
            .iter()
            .map(|(file, text)| {
                // The presets are compiled in and covered by a test: failing here is a build defect.
                let policy = Self::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
                (policy.jurisdiction_code.clone(), policy)
            })
            .collect();
        Policies { by_code }
    }

    pub fn for_code(&self, code: &str) -> Option<&Policy> {
        self.by_code.get(code)
    }

    /// The policy of the nearest jurisdiction among `codes_root_first` (a grid's ancestors' codes,
    /// root first, the grid itself last).
    pub fn nearest<'a>(
        &self,
        codes_root_first: impl DoubleEndedIterator<Item = &'a str>,
    ) -> Option<&Policy> {
        codes_root_first
            .rev()
            .find_map(|code| self.by_code.get(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_quote_their_source() {
        let policies = Policies::builtin();
        let rongjiang = policies.for_code("522632").expect("榕江 preset");
        let village = rongjiang
            .staffing
            .iter()
            .find(|r| r.level == "village" && r.role == Role::Inspector)
            .expect("village inspector rule");
        assert_eq!(village.min, 3);
        assert!(village.quote.contains("每个网格的网格员原则上不得少于3人"));
        assert_eq!(
            policies
                .nearest(["522632", "522632001"].into_iter())
                .map(|p| p.name.as_str()),
            Some("榕江县")
        );
    }

    #[test]
    fn a_malformed_policy_names_the_line() {
        let err = Policies::parse("bad.toml", "jurisdiction_code = \"1\"\nname = \"x\"\ntimezone = \"Asia/Shanghai\"\n[[staffing]]\nlevel = 3\n")
            .expect_err("malformed");
        let text = err.to_string();
        assert!(
            text.contains("bad.toml") && text.contains("line 5"),
            "{text}"
        );
    }
}
