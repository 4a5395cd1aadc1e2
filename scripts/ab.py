#!/usr/bin/env python3
"""Interleaved A/B of echo servers under ../shared/bench's load generator.

usage: scripts/ab.py REPS 'WSLOAD ARGS' NAME='COMMAND' [NAME='COMMAND' ...]

COMMAND contains {port}; prefix it with raw: for a raw-TCP server (wsload --raw). Each
repetition starts every target in turn (in an order rotated by one each repetition) (server on CPU 0, wsload on CPU 1, 1 s warm-up, 4 s
measured), so slow drifts of a shared VM hit every build alike. Server CPU per message is
utime + stime from /proc/PID/stat over the measured window, divided by the messages echoed
(10 ms ticks: fine for runs of seconds). Prints every repetition, then the medians.

WSLOAD names the load generator (default: $CARGO_TARGET_DIR/release/wsload, with
CARGO_TARGET_DIR defaulting to ../shared/bench/target). Example, as in docs/bench/:

  scripts/ab.py 4 '--mode echo --conns 10 --depth 4 --size 65536 --binary' \
      old='/tmp/echo_old --port {port}' new='target/release/examples/echo_server --port {port}' \
      raw='raw:../shared/bench/target/release/raw-tcp-echo {port}'
"""
import sys, subprocess, time, json, os, statistics
reps=int(sys.argv[1]); scen=sys.argv[2].split(); targets=[a.split('=',1) for a in sys.argv[3:]]
WS=os.environ.get('WSLOAD', os.path.join(os.environ.get('CARGO_TARGET_DIR', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'bench', 'target')), 'release', 'wsload'))
res={n:[] for n,_ in targets}
def cpu(pid):
    with open(f'/proc/{pid}/stat') as f: x=f.read().rsplit(')',1)[1].split()
    return (int(x[11])+int(x[12]))/os.sysconf('SC_CLK_TCK')
port=9150
for r in range(reps):
    # Rotate the order every repetition: on a shared VM the first run of a round can be
    # systematically faster or slower (one A/B here showed 8% from position alone).
    k=r%len(targets)
    for n,cmd in targets[k:]+targets[:k]:
        port+=1
        raw=cmd.startswith('raw:'); c=cmd[4:] if raw else cmd
        p=subprocess.Popen(['taskset','-c','0','bash','-c','exec '+c.replace('{port}',str(port))],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
        time.sleep(0.4)
        args=[WS,'--url',f'ws://127.0.0.1:{port}/']+(['--raw'] if raw else [])+scen+['--warmup','1','--duration','4']
        lp=subprocess.Popen(['taskset','-c','1']+args,stdout=subprocess.PIPE,stderr=subprocess.DEVNULL,text=True)
        time.sleep(1.0); c0=cpu(p.pid); t0=time.time()
        out,_=lp.communicate(); t1=time.time(); c1=cpu(p.pid)
        p.kill(); p.wait()
        d=json.loads(out.strip().splitlines()[-1])
        rate=d['msgs_per_s']; us=(c1-c0)/(rate*(t1-t0))*1e6 if rate else 0
        res[n].append((rate,us,d['p99_us']))
        print(f'{r} {n:8} {rate:10.0f}/s  {us:6.2f} us/op  p99 {d["p99_us"]}', flush=True)
for n,v in res.items():
    print(f'{n:8} rate med {statistics.median([x[0] for x in v]):10.0f}  cpu/op med {statistics.median([x[1] for x in v]):6.2f}  p99 med {statistics.median([x[2] for x in v])}')
