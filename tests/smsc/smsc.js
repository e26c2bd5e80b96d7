// An SMSC for the end-to-end SMS tests, built on node-smpp's server (npm `smpp`).
//
//   node smsc.js --port 0 --system-id topup --password secret
//
// It listens on 127.0.0.1, prints one JSON object per line on stdout for everything that
// happens, and takes commands as JSON lines on stdin. Events:
//   {"event":"listening","port":N}
//   {"event":"bind","system_id":..,"ok":bool}
//   {"event":"submit","id":..,"from":..,"to":..,"data_coding":..,"esm_class":..,
//    "udh":[ref,total,seq]|null,"text":..,"status":N}     every submit_sm and our answer
//   {"event":"message","to":..,"from":..,"text":..,"parts":N,"data_coding":..}
//                                                         a whole message (parts joined)
//   {"event":"deliver_resp","ref":..,"status":N}          the ESME's answer to a deliver_sm
//   {"event":"generic_nack","status":N} {"event":"enquire_link"} {"event":"unbind"}
//   {"event":"closed"}
// Commands:
//   {"cmd":"mo","from":"+1..","to":"555","text":"..","id":"smsc-id","ref":"..",
//    "coding":"gsm"|"ucs2","split":N}  deliver_sm (split: in N-character parts with a UDH)
//   {"cmd":"throttle","count":N,"status":88}  answer the next N submit_sm with this status
//   {"cmd":"die_after","count":N}    answer N more submit_sm, then exit on the next one
//                                    without answering it (says {"event":"armed","submits_before":N})
//   {"cmd":"receipts","stat":"DELIVRD"|"UNDELIV"|null}   receipts to send (null: none)
//   {"cmd":"garbage"}                 send a PDU with an unknown command id
//   {"cmd":"quit"}
'use strict';

const smpp = require('smpp');
const readline = require('readline');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
const SYSTEM_ID = args['system-id'] || 'topup';
const PASSWORD = args.password || 'secret';

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

const prefix = Date.now().toString(36);
let counter = 0;
let submits = 0;
let throttle = { count: 0, status: 0x58 };
let dieAfter = null;
let receiptStat = 'DELIVRD';
let sessions = [];
const partials = new Map();

function e164(addr, ton) {
  return ton === 1 && !addr.startsWith('+') ? '+' + addr : addr;
}

function concatInfo(udh) {
  // node-smpp gives the UDH as a list of information elements [iei, len, ...data].
  for (const ie of udh || []) {
    if (ie[0] === 0x00 && ie.length >= 5) return [ie[2], ie[3], ie[4]];
    if (ie[0] === 0x08 && ie.length >= 6) return [(ie[2] << 8) | ie[3], ie[4], ie[5]];
  }
  return null;
}

function onSubmit(session, pdu) {
  if (dieAfter !== null) {
    if (dieAfter === 0) {
      // Killed with a message read and not answered.
      emit({ event: 'died', to: pdu.destination_addr });
      process.exit(3);
    }
    dieAfter -= 1;
  }
  const sm = pdu.short_message || {};
  const udh = concatInfo(sm.udh);
  const text = typeof sm.message === 'string' ? sm.message : (sm.message || Buffer.alloc(0)).toString();
  const from = e164(pdu.source_addr, pdu.source_addr_ton);
  const to = e164(pdu.destination_addr, pdu.dest_addr_ton);
  let status = 0;
  if (throttle.count > 0) {
    throttle.count -= 1;
    status = throttle.status;
  }
  const id = status === 0 ? `${prefix}${(++counter).toString(16)}` : undefined;
  submits += 1;
  emit({
    event: 'submit', id: id || null, from, to, data_coding: pdu.data_coding,
    esm_class: pdu.esm_class, udh, text, status, registered_delivery: pdu.registered_delivery,
  });
  if (status !== 0) {
    session.send(pdu.response({ command_status: status }));
    return;
  }
  session.send(pdu.response({ message_id: id }));
  let whole = null;
  if (udh) {
    const key = `${to}/${udh[0]}`;
    const got = partials.get(key) || { parts: {}, total: udh[1] };
    got.parts[udh[2]] = text;
    partials.set(key, got);
    if (Object.keys(got.parts).length === got.total) {
      partials.delete(key);
      let all = '';
      for (let i = 1; i <= got.total; i++) all += got.parts[i];
      whole = { text: all, parts: got.total };
    }
  } else {
    whole = { text, parts: 1 };
  }
  if (whole) {
    emit({ event: 'message', from, to, text: whole.text, parts: whole.parts, data_coding: pdu.data_coding });
  }
  if ((pdu.registered_delivery & 1) && receiptStat) {
    const stat = receiptStat;
    setTimeout(() => {
      session.deliver_sm({
        source_addr: pdu.destination_addr,
        source_addr_ton: pdu.dest_addr_ton,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        short_message: `id:${id} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} submit date:2611221200 done date:2611221201 stat:${stat} err:000 text:`,
        receipted_message_id: id,
        message_state: stat === 'DELIVRD' ? 2 : 5,
      }, (resp) => emit({ event: 'deliver_resp', ref: `receipt:${id}`, status: resp.command_status }));
    }, 20);
  }
}

const server = smpp.createServer((session) => {
  let bound = false;
  session.on('error', () => {});
  session.on('bind_transceiver', (pdu) => {
    const ok = pdu.system_id === SYSTEM_ID && pdu.password === PASSWORD;
    emit({ event: 'bind', system_id: pdu.system_id, system_type: pdu.system_type, ok });
    if (!ok) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVPASWD }));
      session.close();
      return;
    }
    bound = true;
    sessions.push(session);
    session.send(pdu.response({ system_id: 'test-smsc' }));
  });
  session.on('submit_sm', (pdu) => {
    if (!bound) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    onSubmit(session, pdu);
  });
  session.on('enquire_link', (pdu) => {
    emit({ event: 'enquire_link' });
    session.send(pdu.response());
  });
  session.on('unbind', (pdu) => {
    emit({ event: 'unbind' });
    session.send(pdu.response());
    session.close();
  });
  session.on('generic_nack', (pdu) => emit({ event: 'generic_nack', status: pdu.command_status }));
  session.on('close', () => {
    sessions = sessions.filter((s) => s !== session);
    emit({ event: 'closed' });
  });
});

function mo(cmd) {
  const session = sessions[sessions.length - 1];
  if (!session) {
    emit({ event: 'error', reason: 'no bound ESME for the MO message' });
    return;
  }
  const ucs2 = cmd.coding === 'ucs2';
  const chunks = [];
  const text = String(cmd.text);
  if (cmd.split) {
    for (let i = 0; i < text.length; i += cmd.split) chunks.push(text.slice(i, i + cmd.split));
  } else {
    chunks.push(text);
  }
  const ref = (counter++ & 0xff);
  chunks.forEach((chunk, i) => {
    const last = i === chunks.length - 1;
    const pdu = {
      source_addr: cmd.from.replace(/^\+/, ''),
      source_addr_ton: cmd.from.startsWith('+') ? 1 : 0,
      source_addr_npi: 1,
      destination_addr: cmd.to || '555',
      data_coding: ucs2 ? 0x08 : 0x00,
      esm_class: 0,
      short_message: chunks.length > 1
        ? { udh: Buffer.from([0x05, 0x00, 0x03, ref, chunks.length, i + 1]), message: chunk }
        : chunk,
    };
    if (last && cmd.id) pdu.receipted_message_id = String(cmd.id);
    session.deliver_sm(pdu, (resp) =>
      emit({ event: 'deliver_resp', ref: cmd.ref || cmd.id || null, part: i + 1, status: resp.command_status }));
  });
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit({ event: 'error', reason: `bad command: ${line}` });
    return;
  }
  switch (cmd.cmd) {
    case 'mo': mo(cmd); break;
    case 'throttle': throttle = { count: cmd.count, status: cmd.status || 0x58 }; break;
    case 'die_after':
      dieAfter = cmd.count;
      emit({ event: 'armed', submits_before: submits });
      break;
    case 'receipts': receiptStat = cmd.stat || null; break;
    case 'garbage':
      for (const s of sessions) {
        // command_id 0x00000777 does not exist; sequence 4242.
        s.socket.write(Buffer.from([0, 0, 0, 16, 0, 0, 7, 0x77, 0, 0, 0, 0, 0, 0, 0x10, 0x92]));
      }
      break;
    case 'quit': process.exit(0); break;
    default: emit({ event: 'error', reason: `unknown command ${cmd.cmd}` });
  }
});
process.stdin.on('end', () => process.exit(0));

server.listen(Number(args.port || 0), '127.0.0.1', () => {
  emit({ event: 'listening', port: server.address().port });
});
