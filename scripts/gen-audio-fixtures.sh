#!/usr/bin/env bash
# Builds the test recordings in audio-fixtures/ (8 kHz mono FLAC) with espeak-ng and sox:
#   speech-en.flac, speech-es.flac, speech-vi.flac  talk-off material (no DTMF in them)
#   music.flac                                       synthesised chords, melody and a chirp
#   keys-in-speech.flac                              DTMF keys mixed into speech; the keys and
#                                                    their start times are in keys-in-speech.txt
# Run from the repository root. Needs espeak-ng and sox.
set -euo pipefail
out=audio-fixtures
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

speak() { # voice, text file, output
  espeak-ng -v "$1" -s 160 -f "$2" -w "$tmp/raw.wav"
  sox "$tmp/raw.wav" -r 8000 -c 1 -b 16 "$3" gain -n -6
}

cat > "$tmp/en.txt" <<'TXT'
Thank you for calling. Your call is important to us. To check your balance, press one. To top up
another number, press two. To recharge your wallet with a card, press three. For all other
enquiries, please stay on the line and an agent will be with you shortly. Please note that calls
may be recorded for training and quality purposes. The recipient's number should include the
country code. For example, to send credit to a mobile phone in Mexico, start with five two. We
accept cards from all major retailers. Your top-up of one hundred pesos to the number you entered
succeeded. A confirmation message will be sent to your phone. Goodbye, and thank you for choosing
us. Seven, eight, nine, zero, four, five, six. Hello? Hello, can you hear me? Yes, I would like to
send fifty dollars to my mother in Manila, she has a Globe number. It did not work last time, the
system said the card was already used, but I bought it yesterday at the corner shop.
TXT
cat > "$tmp/es.txt" <<'TXT'
Gracias por llamar. Para consultar su saldo, marque uno. Para recargar otro número, marque dos.
Su recarga de cien pesos al número cinco cinco, uno dos tres cuatro, cinco seis siete ocho fue
exitosa. Recibirá un mensaje de confirmación. Por favor ingrese el número de su tarjeta seguido de
la tecla numeral. Si necesita ayuda, marque cero para hablar con un agente. Buenos días, quisiera
recargar el teléfono de mi hermano en Guadalajara, es un número de Telcel. Muchas gracias, adiós.
TXT
cat > "$tmp/vi.txt" <<'TXT'
Cảm ơn quý khách đã gọi. Để kiểm tra số dư, xin bấm phím một. Để nạp tiền cho số khác, xin bấm phím
hai. Quý khách đã nạp thành công năm mươi nghìn đồng. Xin vui lòng nhập mã thẻ cào, sau đó bấm phím
thăng. Nếu cần hỗ trợ, xin bấm phím không để gặp nhân viên. Xin chào, tôi muốn nạp tiền cho mẹ tôi.
TXT
speak en-us "$tmp/en.txt" "$tmp/en1.wav"
speak en-gb-x-rp "$tmp/en.txt" "$tmp/en2.wav"
espeak-ng -v en-us+f3 -s 190 -p 70 -f "$tmp/en.txt" -w "$tmp/raw3.wav"
sox "$tmp/raw3.wav" -r 8000 -c 1 -b 16 "$tmp/en3.wav" gain -n -3
sox "$tmp/en1.wav" "$tmp/en2.wav" "$tmp/en3.wav" "$out/speech-en.flac"
speak es-419 "$tmp/es.txt" "$out/speech-es.flac"
speak vi "$tmp/vi.txt" "$out/speech-vi.flac"

# Music: chords of plucked strings, a sine melody over them, and a 300-3400 Hz chirp.
sox -n -r 8000 -c 1 -b 16 "$tmp/chords.wav" synth 2 pluck C3 pluck E3 pluck G3 pluck C4 : \
  synth 2 pluck A2 pluck C3 pluck E3 pluck A3 : synth 2 pluck F2 pluck A2 pluck C3 pluck F3 : \
  synth 2 pluck G2 pluck B2 pluck D3 pluck G3 repeat 3 gain -n -6
sox -n -r 8000 -c 1 -b 16 "$tmp/melody.wav" synth 0.25 sine E5 : synth 0.25 sine D5 : \
  synth 0.25 sine C5 : synth 0.25 sine D5 : synth 0.5 sine E5 : synth 0.25 sine G5 : \
  synth 0.25 sine A5 : synth 0.5 sine G5 : synth 0.5 sine E5 repeat 10 gain -n -10
sox -m -v 1 "$tmp/chords.wav" -v 1 "$tmp/melody.wav" "$tmp/mix.wav" gain -n -3
sox -n -r 8000 -c 1 -b 16 "$tmp/chirp.wav" synth 10 sine 300-3400 gain -n -10
sox -n -r 8000 -c 1 -b 16 "$tmp/organ.wav" synth 10 square C4 square E4 square G4 square B4 gain -n -8
sox "$tmp/mix.wav" "$tmp/chirp.wav" "$tmp/organ.wav" "$out/music.flac"

# Keys in speech: DTMF pairs peaking at -13 dBFS (about -16 dBm0 per tone), 80 ms long, mixed
# (sox -m -v 1: no level division) over speech peaking at -20 dBFS, at the times listed.
sox "$tmp/en1.wav" "$tmp/bed.wav" trim 0 12 gain -n -20
: > "$out/keys-in-speech.txt"
declare -A ROW=([1]=697 [2]=697 [3]=697 [4]=770 [5]=770 [6]=770 [7]=852 [8]=852 [9]=852 ['*']=941 [0]=941 ['#']=941)
declare -A COL=([1]=1209 [2]=1336 [3]=1477 [4]=1209 [5]=1336 [6]=1477 [7]=1209 [8]=1336 [9]=1477 ['*']=1209 [0]=1336 ['#']=1477)
mixes=(-v 1 "$tmp/bed.wav")
t=1.0
for k in 1 5 9 '*' 0 '#' 4 7; do
  sox -n -r 8000 -c 1 -b 16 "$tmp/key-$t.wav" synth 0.08 sine "${ROW[$k]}" synth 0.08 sine mix "${COL[$k]}" \
    gain -n -13 pad "$t" 0
  mixes+=(-v 1 "$tmp/key-$t.wav")
  echo "$t $k" >> "$out/keys-in-speech.txt"
  t=$(echo "$t + 1.25" | bc)
done
sox -m "${mixes[@]}" "$out/keys-in-speech.flac"
soxi -D "$out"/*.flac

# Prompt-format samples: 0.5 s of 440 Hz at 16 kHz (peak 0.25) as MP3 and OGG/Vorbis.
# (MP3 needs lame; Debian package `lame`.)
sox -n -r 16000 -c 1 -b 16 "$tmp/tone.wav" synth 0.5 sine 440 vol 0.25
lame --quiet -b 32 "$tmp/tone.wav" "$out/tone-440hz.mp3"
sox "$tmp/tone.wav" -C 0 "$out/tone-440hz.ogg"
