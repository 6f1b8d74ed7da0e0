//! The kubelet's `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
//! env values may refer to variables defined before them, command and args to any of the
//! container's variables. `$$` is a literal `$`; a reference to an unknown variable, or an
//! unterminated `$(`, stays as written.

/// Expands `$(NAME)` references in `input` through `lookup`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            // A trailing '$' is kept.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The container's env vars in order, each value expanded against the ones before it (a
/// later definition of the same name replaces the earlier value).
pub fn expand_env(vars: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(vars.len());
    for (name, value) in vars {
        let expanded = expand(value, |key| {
            out.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        });
        out.push((name.clone(), expanded));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn kubelet_cases() {
        for (input, want) in [
            ("-p $(PORT)", "-p 8080"),
            ("$(PORT)$(PORT)", "80808080"),
            ("$$(PORT)", "$(PORT)"),
            ("$$$(PORT)", "$8080"),
            ("$(MISSING)", "$(MISSING)"),
            ("x$(EMPTY)y", "xy"),
            ("$(PORT", "$(PORT"),
            ("$PORT", "$PORT"),
            ("cost: 5$", "cost: 5$"),
            ("$é", "$é"),
            ("plain", "plain"),
        ] {
            assert_eq!(expand(input, lookup), want, "{input}");
        }
    }

    #[test]
    fn env_refers_to_earlier_vars_only() {
        let vars = [
            ("A".to_string(), "$(B)-a".to_string()),
            ("B".to_string(), "b".to_string()),
            ("C".to_string(), "$(B)-$(A)".to_string()),
        ];
        let got = expand_env(&vars);
        assert_eq!(got[0].1, "$(B)-a");
        assert_eq!(got[2].1, "b-$(B)-a");
    }
}
