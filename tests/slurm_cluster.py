"""A one-node SLURM cluster on localhost, for tests (tests/test_slurm_cluster.py).

munged, slurmctld and slurmd run as root in the foreground, each a child of
the test; their key, config, state, spool, sockets and logs all live in one
scratch folder, and `stop()` ends them by PID. Clients find the cluster
through SLURM_CONF (`Cluster.env`). Only loopback addresses are used.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

# What the tests run; the daemons live in sbin, which a root PATH may lack.
DAEMONS = ('munged', 'slurmctld', 'slurmd')
CLIENTS = ('sbatch', 'srun', 'sinfo', 'squeue', 'scancel', 'scontrol')
_PATH = os.pathsep.join([os.environ.get('PATH', ''), '/usr/sbin', '/sbin', '/usr/local/sbin'])


def which(name: str) -> str | None:
  return shutil.which(name, path=_PATH)


def unavailable() -> str | None:
  """Why a cluster cannot start here (None: it can)."""
  missing = [name for name in DAEMONS + CLIENTS if which(name) is None]
  if missing:
    return (f'SLURM binaries not found: {", ".join(missing)} (Debian: apt-get install '
            '-y slurm-wlm munge)')
  if os.geteuid() != 0:
    return 'a SLURM test cluster runs its daemons as root (SlurmUser=root); not root'
  return None


def free_ports(count: int) -> list[int]:
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


class Cluster:
  """One node, `localhost` (127.0.0.1), in partition `debug`, CPUs as this
  machine has (at least 2, so that a 2-task job fits)."""

  def __init__(self, scratch):
    self.dir = str(scratch)
    self.conf = os.path.join(self.dir, 'slurm.conf')
    self._procs: list[tuple[str, subprocess.Popen]] = []
    # Clients see only this cluster: no SLURM_* of an allocation the tests run in.
    self.env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    self.env.update(SLURM_CONF=self.conf, PATH=_PATH)
    self.cpus = max(2, len(os.sched_getaffinity(0)))

  def _path(self, *parts) -> str:
    return os.path.join(self.dir, *parts)

  def _write_config(self):
    for sub in ('munge', 'run', 'state', 'spool', 'log'):
      os.makedirs(self._path(sub), exist_ok=True)
    os.chmod(self._path('munge'), 0o700)
    os.chmod(self._path('run'), 0o755)
    key = self._path('munge', 'munge.key')
    with open(key, 'wb') as f:
      f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    ctld_port, slurmd_port = free_ports(2)
    lines = {
        'ClusterName': 'mtltest',
        'SlurmctldHost': 'localhost(127.0.0.1)',
        'SlurmctldPort': ctld_port, 'SlurmdPort': slurmd_port,
        'SlurmUser': 'root', 'SlurmdUser': 'root',
        'AuthType': 'auth/munge', 'CredType': 'cred/munge',
        'AuthInfo': f'socket={self._path("run", "munge.socket")}',
        'MpiDefault': 'none',
        # Daemons and srun bind the addresses above (127.0.0.1), not every interface.
        'CommunicationParameters': 'NoCtldInAddrAny,NoInAddrAny',
        'ProctrackType': 'proctrack/linuxproc', 'TaskPlugin': 'task/none',
        'JobAcctGatherType': 'jobacct_gather/none',
        'AccountingStorageType': 'accounting_storage/none',
        'SelectType': 'select/cons_tres', 'SelectTypeParameters': 'CR_CPU',
        # The node is what this file says (CPUs), whatever slurmd finds.
        'SlurmdParameters': 'config_overrides',
        'ReturnToService': 2, 'KillWait': 5, 'MinJobAge': 600, 'InactiveLimit': 0,
        'StateSaveLocation': self._path('state'), 'SlurmdSpoolDir': self._path('spool'),
        'SlurmctldPidFile': self._path('run', 'slurmctld.pid'),
        'SlurmdPidFile': self._path('run', 'slurmd.pid'),
        'SlurmctldLogFile': self._path('log', 'slurmctld.log'),
        'SlurmdLogFile': self._path('log', 'slurmd.log'),
        'SlurmctldDebug': 'info', 'SlurmdDebug': 'info',
    }
    text = ''.join(f'{k}={v}\n' for k, v in lines.items())
    text += (f'NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 '
             'State=UNKNOWN\n'
             # YES: jobs that ask (--oversubscribe) share CPUs; others get their own.
             'PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP '
             'OverSubscribe=YES\n')
    with open(self.conf, 'w') as f:
      f.write(text)

  def _daemon(self, name: str, *args: str):
    log = open(self._path('log', f'{name}.out'), 'w')  # pylint: disable=consider-using-with
    proc = subprocess.Popen([which(name), *args], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=self.env, cwd=self.dir,
                            start_new_session=True)
    log.close()
    self._procs.append((name, proc))

  def start(self, timeout: float = 60):
    """Starts the daemons; returns when the node is idle, raises with their
    logs if it is not within `timeout` s."""
    self._write_config()
    munge = self._path('munge')
    # -f: the scratch folder's parents (pytest's, mode 0700) are not
    # world-searchable, which munged otherwise refuses for its socket.
    self._daemon('munged', '-F', '-f', f'--socket={self._path("run", "munge.socket")}',
                 f'--key-file={munge}/munge.key', f'--pid-file={munge}/munged.pid',
                 f'--log-file={munge}/munged.log', f'--seed-file={munge}/munged.seed')
    self._wait(lambda: os.path.exists(self._path('run', 'munge.socket')), timeout, 'munged')
    self._daemon('slurmctld', '-D', '-f', self.conf)
    self._daemon('slurmd', '-D', '-f', self.conf, '-N', 'localhost')
    self._wait(lambda: self.node_state() == 'idle', timeout, 'the node to be idle')

  def node_state(self) -> str:
    result = subprocess.run([which('sinfo'), '-h', '-n', 'localhost', '-o', '%T'],
                            env=self.env, capture_output=True, text=True, check=False,
                            timeout=30)
    return result.stdout.strip()

  def _wait(self, ready, timeout, what):
    deadline = time.time() + timeout
    while not ready():
      dead = [name for name, proc in self._procs if proc.poll() is not None]
      if dead or time.time() > deadline:
        raise RuntimeError(f'SLURM test cluster: waited {timeout} s for {what}'
                           f'{"; exited: " + ", ".join(dead) if dead else ""}\n'
                           + self.logs())
      time.sleep(0.5)

  def logs(self, tail: int = 3000) -> str:
    out = []
    for folder in (self._path('log'), self._path('munge')):
      for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(('.log', '.out')):
          with open(os.path.join(folder, name), errors='replace') as f:
            out.append(f'--- {name}\n{f.read()[-tail:]}')
    return '\n'.join(out)

  def run(self, name: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """A client command (sbatch, squeue, ...) against this cluster."""
    kwargs.setdefault('timeout', 60)
    env = {**self.env, **kwargs.pop('env', {})}
    return subprocess.run([which(name), *args], env=env, capture_output=True, text=True,
                          check=False, **kwargs)

  def sbatch_wait(self, *args: str, timeout: float = 600, **kwargs):
    """`sbatch --wait ARGS`: the CompletedProcess once the job (every task of
    an array) has ended; a job still running after `timeout` s is cancelled
    and reported with its state and the daemons' logs."""
    try:
      return self.run('sbatch', '--wait', *args, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
      queue = self.run('squeue', '-o', '%i %T %r %j').stdout
      self.cancel_all()
      raise AssertionError(f'sbatch {" ".join(args)}: not done in {timeout} s\n{queue}\n'
                           + self.logs()) from e

  def cancel_all(self, timeout: float = 60):
    jobs = self.run('squeue', '-h', '-o', '%A').stdout.split()
    if jobs:
      self.run('scancel', *sorted(set(jobs)))
    deadline = time.time() + timeout
    while self.run('squeue', '-h', '-o', '%A').stdout.strip() and time.time() < deadline:
      time.sleep(0.5)

  def stop(self):
    """Cancels what is left of the jobs, then ends the daemons by PID."""
    if any(proc.poll() is None for name, proc in self._procs if name == 'slurmctld'):
      try:
        self.cancel_all()
      except (OSError, subprocess.SubprocessError):
        pass
    for _, proc in reversed(self._procs):
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    for _, proc in reversed(self._procs):
      try:
        proc.wait(timeout=15)
      except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    self._procs = []
