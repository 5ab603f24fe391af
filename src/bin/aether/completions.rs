//! `aether completions bash|zsh|fish`: shell completion scripts for every subcommand and
//! flag. argh has no generator, so the command tree is read from argh's own help text
//! (the `Commands:` and `Options:` sections, and which flags take a value from the usage
//! line): a command added to the binary is completed without any change here.

use std::fmt::Write as _;

/// One command of the tree: its name, its one-line description, its flags and its
/// subcommands.
#[derive(Debug, Default, PartialEq)]
pub struct CommandSpec {
    pub name: String,
    pub description: String,
    /// Every flag, long and short (`--master`, `-o`).
    pub flags: Vec<String>,
    /// The flags of `flags` that take a value.
    pub valued: Vec<String>,
    pub commands: Vec<CommandSpec>,
}

impl CommandSpec {
    /// The tree below `path` (e.g. `["aether"]`), from the help text `help(words)` answers
    /// for `words` (the path after the program name, then `--help`).
    pub fn read(path: &[&str], description: &str, help: &dyn Fn(&[&str]) -> String) -> CommandSpec {
        let text = help(&path[1..]);
        let usage = text.lines().find(|l| l.starts_with("Usage:")).unwrap_or_default();
        let mut spec = CommandSpec {
            name: path.last().copied().unwrap_or_default().to_string(),
            description: description.to_string(),
            ..CommandSpec::default()
        };
        for (name, _) in section(&text, "Options:") {
            // `-o, --output`: the usage line shows one of the two names.
            let flags: Vec<&str> = name.split(", ").filter(|f| f.starts_with('-')).collect();
            let valued = flags.iter().any(|flag| usage.contains(&format!("{flag} <")));
            for flag in flags {
                if valued {
                    spec.valued.push(flag.to_string());
                }
                spec.flags.push(flag.to_string());
            }
        }
        for (name, description) in section(&text, "Commands:") {
            let mut sub = path.to_vec();
            sub.push(&name);
            spec.commands.push(CommandSpec::read(&sub, &description, help));
        }
        spec
    }
}

/// The entries of one section of argh's help: (name, description).
/// An entry starts two spaces in; its description continues on deeper lines.
fn section(text: &str, title: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            inside = line == title;
            continue;
        }
        if !inside {
            continue;
        }
        if line.starts_with("   ") {
            if let Some((_, description)) = entries.last_mut() {
                description.push(' ');
                description.push_str(line.trim());
            }
            continue;
        }
        // The name is one word, or names joined by ", " (`-o, --output`); a long one is
        // followed by its description after a single space.
        let mut words = line.split_whitespace().peekable();
        let mut name = words.next().unwrap_or_default().to_string();
        while name.ends_with(',') {
            name.push(' ');
            name.push_str(words.next().unwrap_or_default());
        }
        let description = words.collect::<Vec<_>>().join(" ");
        entries.push((name, description));
    }
    entries
}

/// Every command below the root with its path, the root first as "".
fn paths<'a>(spec: &'a CommandSpec, prefix: &str, out: &mut Vec<(String, &'a CommandSpec)>) {
    out.push((prefix.to_string(), spec));
    for sub in &spec.commands {
        paths(sub, &format!("{prefix}/{}", sub.name), out);
    }
}

fn names(specs: &[CommandSpec]) -> String {
    specs.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(" ")
}

/// A word as a single-quoted shell word.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The completion script for `shell` (bash, zsh or fish).
pub fn script(shell: &str, root: &CommandSpec) -> Result<String, String> {
    match shell {
        "bash" => Ok(bash(root)),
        "zsh" => Ok(zsh(root)),
        "fish" => Ok(fish(root)),
        _ => Err(format!("no completions for the shell {shell:?}: choose bash, zsh or fish")),
    }
}

/// The shell code that finds which command the words before the cursor name: each word
/// that names a subcommand of the command found so far goes down one level (values and
/// positional arguments name none and are passed over).
fn path_walk(all: &[(String, &CommandSpec)], word: &str, indent: &str) -> String {
    let known: Vec<String> = all.iter().filter(|(p, _)| !p.is_empty()).map(|(p, _)| p.clone()).collect();
    format!("{indent}case \"$path/{word}\" in\n{indent}    {}) path=$path/{word} ;;\n{indent}esac\n", known.join("|"))
}

fn bash(root: &CommandSpec) -> String {
    let mut all = Vec::new();
    paths(root, "", &mut all);
    let name = &root.name;
    let mut out = format!(
        "# bash completion for {name}; generated by `{name} completions bash`.\n\
         _{name}() {{\n\
         \x20   COMPREPLY=()\n\
         \x20   local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}\n\
         \x20   local path='' word i cmds='' flags='' valued=''\n\
         \x20   for ((i = 1; i < COMP_CWORD; i++)); do\n\
         \x20       word=${{COMP_WORDS[i]}}\n"
    );
    out.push_str(&path_walk(&all, "$word", "        "));
    out.push_str("    done\n    case $path in\n");
    for (path, spec) in &all {
        let _ = writeln!(
            out,
            "        {}) cmds={}; flags={}; valued={} ;;",
            quoted(path),
            quoted(&names(&spec.commands)),
            quoted(&spec.flags.join(" ")),
            quoted(&spec.valued.join(" "))
        );
    }
    out.push_str(
        "    esac\n\
         \x20   # A flag's value: files, or anything (bash's default completion).\n\
         \x20   [[ \" $valued \" == *\" $prev \"* ]] && return 0\n\
         \x20   if [[ $cur == -* ]]; then\n\
         \x20       mapfile -t COMPREPLY < <(compgen -W \"$flags\" -- \"$cur\")\n\
         \x20   elif [[ -n $cmds ]]; then\n\
         \x20       mapfile -t COMPREPLY < <(compgen -W \"$cmds\" -- \"$cur\")\n\
         \x20   fi\n\
         }\n",
    );
    let _ = writeln!(out, "complete -o default -F _{name} {name}");
    out
}

fn zsh(root: &CommandSpec) -> String {
    let mut all = Vec::new();
    paths(root, "", &mut all);
    let name = &root.name;
    let mut out = format!(
        "#compdef {name}\n\
         # zsh completion for {name}; generated by `{name} completions zsh`.\n\
         _{name}() {{\n\
         \x20   local path_='' word i\n\
         \x20   local -a cmds flags valued\n\
         \x20   for ((i = 2; i < CURRENT; i++)); do\n\
         \x20       word=${{words[i]}}\n"
    );
    out.push_str(&path_walk(&all, "$word", "        ").replace("$path", "$path_").replace("path=", "path_="));
    out.push_str("    done\n    case $path_ in\n");
    for (path, spec) in &all {
        let commands: Vec<String> = spec
            .commands
            .iter()
            .map(|c| quoted(&format!("{}:{}", c.name, c.description.replace(':', "\\:"))))
            .collect();
        let _ = writeln!(
            out,
            "        {}) cmds=({}); flags=({}); valued=({}) ;;",
            quoted(path),
            commands.join(" "),
            spec.flags.join(" "),
            spec.valued.join(" ")
        );
    }
    out.push_str(
        "    esac\n\
         \x20   if (( ${valued[(Ie)${words[CURRENT-1]}]} )); then\n\
         \x20       _files\n\
         \x20   elif [[ $PREFIX == -* ]]; then\n\
         \x20       compadd -a flags\n\
         \x20   elif (( ${#cmds} )); then\n\
         \x20       _describe command cmds\n\
         \x20   else\n\
         \x20       _files\n\
         \x20   fi\n\
         }\n",
    );
    let _ = write!(
        out,
        "if [[ ${{funcstack[1]}} == _{name} ]]; then\n    _{name} \"$@\"\nelse\n    compdef _{name} {name}\nfi\n"
    );
    out
}

fn fish(root: &CommandSpec) -> String {
    let name = &root.name;
    let mut out = format!("# fish completion for {name}; generated by `{name} completions fish`.\n");
    fish_level(&mut out, name, root, &[]);
    out
}

/// The completions of `spec`, reached through the subcommands `parents`.
fn fish_level(out: &mut String, name: &str, spec: &CommandSpec, parents: &[&str]) {
    // At this level: every parent seen, and no subcommand of this one yet.
    let mut condition: Vec<String> =
        parents.iter().map(|p| format!("__fish_seen_subcommand_from {p}")).collect::<Vec<_>>();
    if !spec.commands.is_empty() {
        condition.push(format!("not __fish_seen_subcommand_from {}", names(&spec.commands)));
    }
    let condition =
        if condition.is_empty() { String::new() } else { format!(" -n {}", quoted(&condition.join("; and "))) };
    for sub in &spec.commands {
        let _ = writeln!(out, "complete -c {name}{condition} -f -a {} -d {}", sub.name, quoted(&sub.description));
    }
    for flag in &spec.flags {
        let option = match flag.strip_prefix("--") {
            Some(long) => format!("-l {long}"),
            None => format!("-s {}", flag.trim_start_matches('-')),
        };
        let value = if spec.valued.contains(flag) { " -r" } else { "" };
        let _ = writeln!(out, "complete -c {name}{condition} {option}{value}");
    }
    for sub in &spec.commands {
        let mut path = parents.to_vec();
        path.push(&sub.name);
        fish_level(out, name, sub, &path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Usage: tool [-V] [<command>] [<args>]\n\nA tool.\n\nOptions:\n  -V, --version     print\n  --a-very-long-flag-name with its description\n                    the version\n  --help, help      display usage information\n\nCommands:\n  get               Get it.\n  put               Put it:\n                    twice.\n";
    const GET: &str = "Usage: tool get [-o <output>] [--json] [--] <id>\n\nGet it.\n\nPositional Arguments:\n  id                the id\n\nOptions:\n  -o, --output      where\n  --json            as JSON\n  --help, help      display usage information\n";
    const PUT: &str = "Usage: tool put <file>\n\nPut it.\n\nOptions:\n  --help, help      display usage information\n";

    fn tree() -> CommandSpec {
        CommandSpec::read(&["tool"], "", &|words: &[&str]| match words {
            [] => ROOT.into(),
            ["get"] => GET.into(),
            ["put"] => PUT.into(),
            _ => panic!("{words:?}"),
        })
    }

    #[test]
    fn the_tree_is_read_from_help_text() {
        let root = tree();
        assert_eq!(root.flags, ["-V", "--version", "--a-very-long-flag-name", "--help"]);
        assert!(root.valued.is_empty());
        assert_eq!(names(&root.commands), "get put");
        assert_eq!(root.commands[1].description, "Put it: twice.");
        let get = &root.commands[0];
        assert_eq!(get.flags, ["-o", "--output", "--json", "--help"]);
        assert_eq!(get.valued, ["-o", "--output"]);
    }

    #[test]
    fn every_shell_names_every_command() {
        let root = tree();
        for shell in ["bash", "zsh", "fish"] {
            let text = script(shell, &root).unwrap();
            assert!(text.contains("get") && text.contains("put") && text.contains("json"), "{shell}: {text}");
        }
        assert!(script("tcsh", &root).is_err());
    }
}
