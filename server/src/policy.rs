//! Jurisdiction rules as data (one TOML file per county or prefecture, each rule quoting the seed
//! document it comes from): staffing minimums, and the compliance rules (patrol duty, key-point
//! coverage, the weekly record's deadline, what makes a patrol count and which fraud signals are
//! hard), versioned by the ISO week from which they apply: a week is judged by the rules in force
//! then, whatever changes later.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Role;

/// Presets shipped with the server, keyed by the jurisdiction's administrative code.
const BUILTIN: &[(&str, &str)] = &[
    (
        "rongjiang_522632.toml",
        include_str!("../policies/rongjiang_522632.toml"),
    ),
    (
        "changji_652300.toml",
        include_str!("../policies/changji_652300.toml"),
    ),
    (
        "gaochang_650402.toml",
        include_str!("../policies/gaochang_650402.toml"),
    ),
    (
        "wenzhou_330300.toml",
        include_str!("../policies/wenzhou_330300.toml"),
    ),
    (
        "yiyang_430900.toml",
        include_str!("../policies/yiyang_430900.toml"),
    ),
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The administrative code of the jurisdiction's root grid (county or prefecture).
    pub jurisdiction_code: String,
    pub name: String,
    pub timezone: String,
    #[serde(default)]
    pub staffing: Vec<StaffingRule>,
    /// Compliance rules, each set from its `from_week` on (the latest that has begun applies).
    #[serde(default)]
    pub compliance: Vec<ComplianceRules>,
    /// The size photos travel at from this jurisdiction's phones.
    #[serde(default)]
    pub photos: PhotoPolicy,
}

/// The size photos travel at: what a phone keeps and uploads of each photo (`GET /v1/me` gives
/// it to the phone; the SDK applies it when a photo is attached). A 12-megapixel photo at the
/// defaults is about 0.4–0.8 MB instead of 3–5 MB: minutes less on a 2G link each.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PhotoPolicy {
    /// Long edge in pixels photos are downscaled to (EXIF kept); smaller photos are left as
    /// they are.
    pub long_edge: u32,
    /// JPEG quality of a downscaled photo, 1–100.
    pub jpeg_quality: u8,
    /// Upload photos as the camera took them (no downscaling): for jurisdictions that need the
    /// originals, at the cost of the bytes.
    pub originals: bool,
}

impl Default for PhotoPolicy {
    fn default() -> Self {
        PhotoPolicy {
            long_edge: 2048,
            jpeg_quality: 85,
            originals: false,
        }
    }
}

/// The compliance rules of a jurisdiction from a given ISO week on.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ComplianceRules {
    /// `2026-W01`: the first ISO week these rules judge.
    #[schema(value_type = String)]
    pub from_week: toml::Spanned<String>,
    /// Patrols required of people or grids.
    #[serde(default)]
    pub duty: Vec<DutyRule>,
    /// Every key point (重点点位) of a grid patrolled at least this often.
    pub key_points: Option<KeyPointRule>,
    /// When the week's record is due.
    pub deadline: Option<DeadlineRule>,
    /// What makes a patrol count, and which fraud signals are hard.
    #[serde(default)]
    pub patrol: crate::compliance::verdict::PatrolRules,
    /// Where the patrol rules come from (the seed sentence), or why they are GridPatrol's defaults.
    #[serde(default)]
    pub patrol_quote: String,
}

/// How often something is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Week,
    Month,
    Quarter,
}

/// At least `min` counted patrols per `per`, by each person with `role` in grids of `level`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DutyRule {
    pub level: String,
    pub role: Role,
    pub per: Period,
    pub min: u32,
    pub quote: String,
}

/// Every key point covered by at least `min` counted patrols per `per`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPointRule {
    pub per: Period,
    pub min: u32,
    /// A patrol covers a key point when a fix comes this close to it.
    #[serde(default = "default_visit_radius")]
    pub visit_radius_m: f64,
    pub quote: String,
}

fn default_visit_radius() -> f64 {
    100.0
}

/// The week's record is due on `weekday` at `time` (local) of the following week.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadlineRule {
    /// `mon` … `sun`.
    pub weekday: String,
    /// `HH:MM`.
    pub time: String,
    pub quote: String,
}

impl ComplianceRules {
    /// The first day of `from_week`.
    pub fn starts(&self) -> Option<chrono::NaiveDate> {
        parse_week(self.from_week.get_ref())
    }
}

/// `2026-W05` → the Monday of ISO week 5 of 2026.
pub fn parse_week(text: &str) -> Option<chrono::NaiveDate> {
    let (year, week) = text.split_once("-W")?;
    chrono::NaiveDate::from_isoywd_opt(year.parse().ok()?, week.parse().ok()?, chrono::Weekday::Mon)
}

impl Policy {
    /// The compliance rules that judge the week starting on `monday`.
    pub fn rules_for_week(&self, monday: chrono::NaiveDate) -> Option<&ComplianceRules> {
        self.compliance
            .iter()
            .filter(|rules| rules.starts().is_some_and(|start| start <= monday))
            .max_by_key(|rules| rules.starts())
    }
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
        let line = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let mut weeks = std::collections::BTreeSet::new();
        for rules in &policy.compliance {
            let at = line(rules.from_week.span().start);
            let Some(start) = rules.starts() else {
                return Err(PolicyError {
                    file: file.into(),
                    message: format!(
                        "line {at}: from_week {:?} is not an ISO week like \"2026-W01\"",
                        rules.from_week.get_ref()
                    ),
                });
            };
            if !weeks.insert(start) {
                return Err(PolicyError {
                    file: file.into(),
                    message: format!("line {at}: two rule sets start in the same week"),
                });
            }
            let problem = if let Some(deadline) = &rules.deadline
                && (weekday(&deadline.weekday).is_none()
                    || chrono::NaiveTime::parse_from_str(&deadline.time, "%H:%M").is_err())
            {
                Some("deadline: weekday is mon … sun and time is HH:MM".to_string())
            } else if !(0.0..=1.0).contains(&rules.patrol.min_inside_share) {
                Some("patrol.min_inside_share is a share between 0 and 1".to_string())
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(PolicyError {
                    file: file.into(),
                    message: format!("the rules from line {at}: {problem}"),
                });
            }
        }
        Ok(policy)
    }

    /// All jurisdictions' policies.
    pub fn all(&self) -> impl Iterator<Item = &Policy> {
        self.by_code.values()
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

    /// The built-in presets, replaced jurisdiction by jurisdiction by the files in `dir`
    /// (`<data dir>/policies/*.toml`): an admin changes a jurisdiction's rules by adding a
    /// `[[compliance]]` set with a later `from_week` to its file. A file that does not parse stops
    /// the server from starting, with its name and line.
    pub fn load(dir: &std::path::Path) -> Result<Policies, PolicyError> {
        let mut policies = Self::builtin();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(policies),
            Err(e) => {
                return Err(PolicyError {
                    file: dir.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let mut files: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for path in files {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| PolicyError {
                file: name.clone(),
                message: e.to_string(),
            })?;
            let policy = Self::parse(&name, &text)?;
            policies
                .by_code
                .insert(policy.jurisdiction_code.clone(), policy);
        }
        Ok(policies)
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

/// `mon` … `sun` (or the full English name).
pub fn weekday(text: &str) -> Option<chrono::Weekday> {
    text.parse().ok()
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

    /// Issue 23: a policy file with an unknown key fails to load, naming the key and its line.
    #[test]
    fn an_unknown_patrol_rule_names_its_key_and_line() {
        let text = "jurisdiction_code = \"522632\"\nname = \"榕江县\"\ntimezone = \"Asia/Shanghai\"\n\n[[compliance]]\nfrom_week = \"2026-W01\"\n\n[compliance.patrol]\nmin_photos = 1\nmax_sped_kmh = 90\n";
        let error = Policies::parse("typo.toml", text).expect_err("unknown key");
        let message = error.to_string();
        assert!(message.contains("max_sped_kmh"), "{message}");
        assert!(message.contains("line 10"), "{message}");
    }

    /// Issue 23: every threshold and every hard/soft choice appears in each preset, so that a
    /// reader of the file sees all of it (a missing key would silently take the code's default).
    #[test]
    fn every_preset_lists_every_patrol_rule() {
        let defaults = toml::Value::try_from(crate::compliance::verdict::PatrolRules::default())
            .expect("rules as TOML");
        let keys: Vec<&String> = defaults.as_table().expect("table").keys().collect();
        for (file, text) in BUILTIN {
            let value: toml::Value = toml::from_str(text).expect(file);
            for rules in value["compliance"].as_array().expect("compliance") {
                let patrol = rules.get("patrol").and_then(|p| p.as_table());
                let patrol = patrol.unwrap_or_else(|| panic!("{file}: no [compliance.patrol]"));
                for key in &keys {
                    assert!(patrol.contains_key(*key), "{file}: {key} missing");
                }
                let hard = patrol["hard_signals"].as_array().expect("hard_signals");
                for signal in [
                    "teleport",
                    "impossible_speed",
                    "no_photo_in_patrol",
                    "replayed_track",
                ] {
                    assert!(
                        hard.iter().any(|h| h.as_str() == Some(signal)),
                        "{file}: {signal}"
                    );
                }
            }
        }
    }

    /// 榕江: "网格员每周巡查原则上不少于1次，对网格内的重点监控区域、点位全覆盖巡查每月不少于2次"
    /// and "于每周三上午12：00前将网格巡查资料……报至县环委办邮箱".
    #[test]
    fn rongjiang_sets_weekly_patrols_key_points_twice_a_month_and_wednesday_noon() {
        let policies = Policies::builtin();
        let rongjiang = policies.for_code("522632").expect("榕江 preset");
        let week = parse_week("2026-W48").expect("week");
        let rules = rongjiang.rules_for_week(week).expect("rules in force");
        let inspector = rules
            .duty
            .iter()
            .find(|d| d.role == Role::Inspector)
            .expect("inspector duty");
        assert_eq!((inspector.per, inspector.min), (Period::Week, 1));
        assert!(inspector.quote.contains("网格员每周巡查原则上不少于1次"));
        let key_points = rules.key_points.as_ref().expect("key points");
        assert_eq!((key_points.per, key_points.min), (Period::Month, 2));
        let deadline = rules.deadline.as_ref().expect("deadline");
        assert_eq!(weekday(&deadline.weekday), Some(chrono::Weekday::Wed));
        assert_eq!(deadline.time, "12:00");
        assert!(deadline.quote.contains("每周三上午12：00前"));
        assert_eq!(rules.patrol.min_inside_share, 0.6);
        // Before the rules began, nothing judges.
        assert!(
            rongjiang
                .rules_for_week(parse_week("2025-W52").expect("week"))
                .is_none()
        );
    }

    /// The four other seeds, each from its own text: 昌吉 "四级网格监督员每日至少要对网格内的污染源
    /// 巡查一次"; 温州 "上级网格责任人员每季度要对下级网格的环境监管工作进行督查"; 益阳 "负责每月至少
    /// 组织一次对重点企业进行突击检查"; 高昌 "定期巡查" (no number: GridPatrol's default, said so).
    #[test]
    fn every_seed_has_a_preset_quoting_its_duty() {
        let policies = Policies::builtin();
        let week = parse_week("2026-W48").expect("week");
        let duty = |code: &str, level: &str| {
            let policy = policies.for_code(code).unwrap_or_else(|| panic!("{code}"));
            let rules = policy.rules_for_week(week).expect("rules");
            let rule = rules
                .duty
                .iter()
                .find(|d| d.level == level)
                .unwrap_or_else(|| panic!("{code} {level}"))
                .clone();
            (rule.per, rule.min, rule.quote)
        };
        let (per, min, quote) = duty("652300", "village");
        assert_eq!((per, min), (Period::Day, 1));
        assert!(quote.contains("四级网格监督员每日至少要对网格内的污染源巡查一次"));
        let (per, min, quote) = duty("330300", "township");
        assert_eq!((per, min), (Period::Quarter, 1));
        assert!(quote.contains("每季度要对下级网格的环境监管工作进行督查"));
        let (per, min, quote) = duty("430900", "county");
        assert_eq!((per, min), (Period::Month, 1));
        assert!(quote.contains("每月至少组织一次对重点企业进行突击检查"));
        let (per, _, quote) = duty("650402", "village");
        assert_eq!(per, Period::Week);
        assert!(
            quote.contains("定期巡查") && quote.contains("默认值"),
            "{quote}"
        );
        assert_eq!(policies.all().count(), 5);
    }

    #[test]
    fn a_later_rule_set_applies_from_its_week_and_earlier_weeks_keep_theirs() {
        let text = "jurisdiction_code = \"1\"\nname = \"x\"\ntimezone = \"Asia/Shanghai\"\n\
                    [[compliance]]\nfrom_week = \"2026-W01\"\n[compliance.patrol]\nmin_photos = 1\n\
                    [[compliance]]\nfrom_week = \"2026-W30\"\n[compliance.patrol]\nmin_photos = 2\n";
        let policy = Policies::parse("x.toml", text).expect("parses");
        let photos = |week: &str| {
            policy
                .rules_for_week(parse_week(week).expect("week"))
                .map(|r| r.patrol.min_photos)
        };
        assert_eq!(photos("2026-W29"), Some(1));
        assert_eq!(photos("2026-W30"), Some(2));
        assert_eq!(photos("2027-W10"), Some(2));
    }

    #[test]
    fn bad_compliance_rules_name_their_line() {
        for (text, wanted) in [
            ("[[compliance]]\nfrom_week = \"2026-53\"\n", "line 6"),
            (
                "[[compliance]]\nfrom_week = \"2026-W02\"\n[compliance.deadline]\nweekday = \"someday\"\ntime = \"12:00\"\nquote = \"\"\n",
                "line 6",
            ),
            (
                "[[compliance]]\nfrom_week = \"2026-W02\"\n[compliance.patrol]\nmin_inside_share = 60\n",
                "line 6",
            ),
            (
                "[[compliance]]\nfrom_week = \"2026-W02\"\nsurprise = 1\n",
                "line 7",
            ),
        ] {
            let text = format!(
                "jurisdiction_code = \"1\"\nname = \"x\"\ntimezone = \"Asia/Shanghai\"\n\n{text}"
            );
            let error = Policies::parse("bad.toml", &text)
                .expect_err(&text)
                .to_string();
            assert!(
                error.contains("bad.toml") && error.contains(wanted),
                "{error}"
            );
        }
    }

    #[test]
    fn files_in_the_data_directory_replace_a_preset_and_bad_ones_stop_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let rongjiang = include_str!("../policies/rongjiang_522632.toml").to_string()
            + "\n[[compliance]]\nfrom_week = \"2027-W01\"\n[compliance.patrol]\nmin_photos = 2\n";
        std::fs::write(dir.path().join("rongjiang.toml"), rongjiang).expect("write");
        let policies = Policies::load(dir.path()).expect("loads");
        let rules = policies
            .for_code("522632")
            .and_then(|p| p.rules_for_week(parse_week("2027-W05").expect("week")))
            .expect("rules");
        assert_eq!(
            rules.patrol.min_photos, 2,
            "the admin's change from 2027-W01 on"
        );
        assert_eq!(policies.all().count(), 5, "the other presets stay");
        std::fs::write(
            dir.path().join("zz_bad.toml"),
            "jurisdiction_code = \"1\"\nname = 3\n",
        )
        .expect("write");
        let error = Policies::load(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("zz_bad.toml") && error.contains("line 2"),
            "{error}"
        );
        assert!(
            Policies::load(&dir.path().join("missing")).is_ok(),
            "no directory: presets"
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
