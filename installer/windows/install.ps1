<#
.SYNOPSIS
  Install (or upgrade in place) the Proscribe agent on Windows, started at boot as SYSTEM and
  restarted when it fails.

.DESCRIPTION
  NOT RUN IN CI (no Windows here; see docs/limitations.md). What a test does check: the
  render_config.py flags this script passes exist, and render_config.py --platform windows
  renders the same settings as Linux.

  - Creates a virtual environment in "C:\Program Files\Proscribe" from an offline wheelhouse
    (pip --no-index --find-links), replacing the old one on upgrade.
  - Writes C:\ProgramData\Proscribe\agent.toml with installer\common\render_config.py (the
    same generator as Linux and macOS), only when it does not exist or -ForceConfig is given.
  - Copies the enroll secret to C:\ProgramData\Proscribe\enroll.secret, readable only by
    SYSTEM and Administrators. State (spool, agent key, policy state) lives in
    C:\ProgramData\Proscribe\state and is kept across upgrades.
  - Registers the agent to start at boot as LocalSystem and restart on failure. The agent is a
    console program that does not speak the Service Control Manager protocol, so "sc.exe
    create" would have it killed after 30 s; a boot-time Scheduled Task running as SYSTEM with
    a restart-on-failure policy is used instead (no extra binaries). Run with -Uninstall to
    remove it.

.EXAMPLE
  powershell -ExecutionPolicy Bypass -File install.ps1 -Wheelhouse .\wheelhouse `
    -CollectorUrl https://collector.example:8443 -EnrollSecretFile .\enroll.secret `
    -TrustedKey "ed25519:..." -Threshold 1
#>
[CmdletBinding()]
param(
    [string]$Wheelhouse = (Join-Path $PSScriptRoot 'wheelhouse'),
    [string]$Python = 'py',
    [string]$CollectorUrl,
    [string]$CaFile,
    [string]$EnrollSecretFile,
    [string[]]$TrustedKey = @(),
    [int]$Threshold = 1,
    [ValidateSet('enforce', 'monitor')][string]$Mode = 'enforce',
    [ValidateSet('capture', 'proxy', 'off')][string]$Dns = 'proxy',
    [string]$Policy,
    [switch]$ForceConfig,
    [switch]$Uninstall,
    [switch]$Purge
)
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$Prefix = Join-Path $env:ProgramFiles 'Proscribe'
$ConfDir = Join-Path $env:ProgramData 'Proscribe'
$StateDir = Join-Path $ConfDir 'state'
$Config = Join-Path $ConfDir 'agent.toml'
$TaskName = 'Proscribe Agent'
$Done = New-Object System.Collections.Generic.List[string]

function Fail([string]$Message) {
    [Console]::Error.WriteLine("install.ps1: error: $Message")
    exit 2
}

function Restrict-ToSystem([string]$Path) {
    # Only SYSTEM and Administrators may read it (the secret authenticates this host).
    & icacls.exe $Path /inheritance:r /grant:r '*S-1-5-18:(F)' '*S-1-5-32-544:(F)' | Out-Null
    if ($LASTEXITCODE -ne 0) { Fail "icacls could not restrict $Path" }
}

if (-not ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole(
        [Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Fail 'run this from an elevated (Administrator) PowerShell'
}

if ($Uninstall) {
    Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
    Unregister-ScheduledTask -TaskName $TaskName -Confirm:$false -ErrorAction SilentlyContinue
    Remove-Item -Recurse -Force $Prefix -ErrorAction SilentlyContinue
    foreach ($f in 'agent.toml', 'agent.toml.bak', 'enroll.secret', 'ca.pem', 'policy.toml', 'policy.toml.sig') {
        Remove-Item -Force (Join-Path $ConfDir $f) -ErrorAction SilentlyContinue
    }
    if ($Purge) { Remove-Item -Recurse -Force $StateDir -ErrorAction SilentlyContinue }
    if ((Test-Path $ConfDir) -and -not (Get-ChildItem $ConfDir)) { Remove-Item $ConfDir }
    Write-Output 'Proscribe agent removed.'
    exit 0
}

# ---- the virtual environment ----------------------------------------------------------------
if (-not (Test-Path $Wheelhouse)) { Fail "-Wheelhouse ${Wheelhouse}: no such directory" }
$pyArgs = @()
if ($Python -eq 'py') { $pyArgs = @('-3.11') }
& $Python @pyArgs -c 'import sys; sys.exit(sys.version_info < (3, 11))'
if ($LASTEXITCODE -ne 0) { Fail "$Python is not Python 3.11 or newer (fix: -Python C:\Path\python.exe)" }

Stop-ScheduledTask -TaskName $TaskName -ErrorAction SilentlyContinue
$New = "$Prefix.new"
Remove-Item -Recurse -Force $New -ErrorAction SilentlyContinue
& $Python @pyArgs -m venv $New
if ($LASTEXITCODE -ne 0) { Fail 'could not create the virtual environment' }
& "$New\Scripts\python.exe" -m pip install -q --disable-pip-version-check --no-index --find-links $Wheelhouse proscribe
if ($LASTEXITCODE -ne 0) { Remove-Item -Recurse -Force $New; Fail "pip could not install proscribe from $Wheelhouse" }
New-Item -ItemType Directory -Force "$New\share\installer\common" | Out-Null
Copy-Item (Join-Path $PSScriptRoot '..\common\render_config.py') "$New\share\installer\common\"
# Windows venvs hold absolute paths in pyvenv.cfg only; the launcher .exe files find
# python.exe beside them, so a rename is safe.
if (Test-Path $Prefix) { Remove-Item -Recurse -Force $Prefix }
Move-Item $New $Prefix
$Done.Add("installed the virtual environment in $Prefix")

# ---- configuration ---------------------------------------------------------------------------
New-Item -ItemType Directory -Force $ConfDir, $StateDir | Out-Null
Restrict-ToSystem $StateDir
$renderArgs = @('agent', '--platform', 'windows', '--mode', $Mode, '--dns', $Dns, '--threshold', "$Threshold")
if ($CollectorUrl) { $renderArgs += @('--collector-url', $CollectorUrl) }
if ($CaFile) {
    Copy-Item $CaFile (Join-Path $ConfDir 'ca.pem') -Force
    $renderArgs += @('--ca-file', (Join-Path $ConfDir 'ca.pem'))
}
if ($EnrollSecretFile) {
    $secret = Join-Path $ConfDir 'enroll.secret'
    Copy-Item $EnrollSecretFile $secret -Force
    Restrict-ToSystem $secret
    $renderArgs += @('--enroll-secret-file', $secret)
    $Done.Add("copied the enroll secret to $secret (SYSTEM and Administrators only)")
}
foreach ($k in $TrustedKey) { $renderArgs += @('--trusted-key', $k) }
if ($Policy) {
    if (-not (Test-Path "$Policy.sig")) { Fail "-Policy ${Policy}: its signature $Policy.sig is missing" }
    Copy-Item $Policy (Join-Path $ConfDir 'policy.toml') -Force
    Copy-Item "$Policy.sig" (Join-Path $ConfDir 'policy.toml.sig') -Force
}
if ((Test-Path $Config) -and -not $ForceConfig) {
    $Done.Add("kept the existing $Config (pass -ForceConfig to rewrite it)")
} else {
    if (Test-Path $Config) { Copy-Item $Config "$Config.bak" -Force }
    & "$Prefix\Scripts\python.exe" "$Prefix\share\installer\common\render_config.py" @renderArgs -o $Config
    if ($LASTEXITCODE -ne 0) { Fail "could not write $Config (see the line above)" }
    $Done.Add("wrote $Config")
}

# ---- start at boot as SYSTEM, restart on failure ----------------------------------------------
$action = New-ScheduledTaskAction -Execute "$Prefix\Scripts\proscribe.exe" `
    -Argument "agent run --config `"$Config`"" -WorkingDirectory $StateDir
$trigger = New-ScheduledTaskTrigger -AtStartup
$principal = New-ScheduledTaskPrincipal -UserId 'S-1-5-18' -LogonType ServiceAccount -RunLevel Highest
$settings = New-ScheduledTaskSettingsSet -RestartCount 9999 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero) -StartWhenAvailable -AllowStartIfOnBatteries `
    -DontStopIfGoingOnBatteries -MultipleInstances IgnoreNew
Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Principal $principal `
    -Settings $settings -Description 'Proscribe agent (AI-tool policy enforcement)' -Force | Out-Null
Start-ScheduledTask -TaskName $TaskName
$Done.Add("registered and started the boot task '$TaskName' (SYSTEM, restart every minute on failure)")

Write-Output 'Proscribe agent installed:'
$Done | ForEach-Object { Write-Output "  - $_" }
