"""Writes the relay's test corpus: messages shaped like what real clients send.

Each message is hand-written to imitate one client's structure (boundaries, header order,
encodings, HTML quirks). Encoded bodies (base64, quoted-printable) are produced here from the
readable HTML so the files stay reviewable. Run: python tests/corpus/build.py
expectations.json records, per file, how many HTML parts get a pixel or why none does.
"""

from __future__ import annotations

import base64
import json
import quopri
from pathlib import Path

HERE = Path(__file__).parent
EXPECT: dict[str, dict] = {}


def qp(text: str, charset: str = "utf-8") -> str:
    return quopri.encodestring(text.encode(charset).replace(b"\n", b"\r\n")).decode("ascii")


def b64(data: bytes | str, charset: str = "utf-8", width: int = 76) -> str:
    raw = data.encode(charset) if isinstance(data, str) else data
    flat = base64.b64encode(raw).decode()
    return "\n".join(flat[i : i + width] for i in range(0, len(flat), width))


def write(
    name: str,
    text: str | bytes,
    *,
    pixels: int = 0,
    untracked: str | None = None,
    encoding: str = "utf-8",
) -> None:
    data = text.encode(encoding) if isinstance(text, str) else text
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    (HERE / name).write_bytes(data)
    EXPECT[name] = {"pixels": pixels, "untracked": untracked}


# Encoded bodies, built here because f-string braces cannot hold backslashes on 3.11.
_PART1 = b64(
    "Hi Marta,\n\nPlease find the revised quote for the Lyon project below. Prices are in EUR, excluding VAT – let me know if anything is unclear.\n\nKind regards,\nJonathan Reeve\n"
)
_PART2 = qp(
    "Cara Lúcia,\n\nSegue em anexo a versão final do contrato – com as alterações “acordadas”.\n\nCumprimentos,\nCarlos\n",
    "windows-1252",
)
_PART3 = qp(
    "Hi Sam,\n\nHere are the photos from Saturday 📸 — the one by the lake is my favourite.\n\n\nLena"
)
_PART4 = b64(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
_PART5 = b64("¡Hola equipo! 🎉\n\nLa fiesta es el sábado a las 20:00. Traed comida 🍕🌮.\n")
_PART6 = b64(
    '<div dir="ltr">¡Hola equipo! 🎉<div><br></div><div>La fiesta es el sábado a las 20:00. Traed comida 🍕🌮.</div></div>\n'
)
_PART7 = b64(
    "<!DOCTYPE html><html><head><title>Q3</title></head><body><h1>Q3 report</h1><table><tr><td>Revenue</td><td>1.2M</td></tr></table></body></html>\n"
)
_PART8 = qp("Neue Brote im Oktober 🍞\n\nKürbisbrot, Walnussbrot und unser Roggenmischbrot.\n")
_PART9 = qp("Perfetto, ci vediamo alle 20! 😊\n\nInviato da iPhone")

OUTLOOK_HTML = """<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office" xmlns:w="urn:schemas-microsoft-com:office:word" xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" xmlns="http://www.w3.org/TR/REC-html40">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<meta name="Generator" content="Microsoft Word 15 (filtered medium)">
<!--[if !mso]><style>v\\:* {behavior:url(#default#VML);}
o\\:* {behavior:url(#default#VML);}
</style><![endif]--><style><!--
/* Font Definitions */
@font-face
	{font-family:"Cambria Math";
	panose-1:2 4 5 3 5 4 6 3 2 4;}
p.MsoNormal, li.MsoNormal, div.MsoNormal
	{margin:0cm;
	font-size:11.0pt;
	font-family:"Calibri",sans-serif;}
--></style><!--[if gte mso 9]><xml>
<o:shapedefaults v:ext="edit" spidmax="1026" />
</xml><![endif]--><!--[if gte mso 9]><xml>
<o:shapelayout v:ext="edit">
<o:idmap v:ext="edit" data="1" />
</o:shapelayout></xml><![endif]-->
</head>
<body lang="EN-GB" link="#0563C1" vlink="#954F72" style="word-wrap:break-word">
<div class="WordSection1">
<p class="MsoNormal">Hi Marta,<o:p></o:p></p>
<p class="MsoNormal"><o:p>&nbsp;</o:p></p>
<p class="MsoNormal">Please find the revised quote for the Lyon project below. Prices are in EUR, excluding VAT – let me know if anything is unclear.<o:p></o:p></p>
<!--[if mso]><v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" href="https://example.com/quote" style="height:36px;v-text-anchor:middle;width:180px;" arcsize="10%" fillcolor="#0563C1"><w:anchorlock/><center style="color:#ffffff;">View quote</center></v:roundrect></body><![endif]-->
<p class="MsoNormal">Kind regards,<o:p></o:p></p>
<p class="MsoNormal">Jonathan Reeve<o:p></o:p></p>
</div>
</body>
</html>
"""

write(
    "outlook_qp_alternative.eml",
    f"""From: Jonathan Reeve <jonathan.reeve@reeve-consulting.co.uk>
To: Marta Kowalska <marta@studio-kowalska.pl>
CC: Finance <finance@reeve-consulting.co.uk>
Subject: Revised quote – Lyon project
Thread-Topic: Revised quote – Lyon project
Thread-Index: AdnK3vQ7o1d6J2u9Rc6Q0aH7uXb2Ww==
Date: Tue, 14 Oct 2025 09:12:44 +0000
Message-ID: <LO4P265MB5894A1B2C3D4E5F6@LO4P265MB5894.GBRP265.PROD.OUTLOOK.COM>
Accept-Language: en-GB, en-US
Content-Language: en-GB
X-MS-Has-Attach:
X-MS-TNEF-Correlator:
Content-Type: multipart/alternative;
	boundary="_000_LO4P265MB5894A1B2C3D4E5F6LO4P265MB5894GBRP_"
MIME-Version: 1.0

--_000_LO4P265MB5894A1B2C3D4E5F6LO4P265MB5894GBRP_
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: base64

{_PART1}

--_000_LO4P265MB5894A1B2C3D4E5F6LO4P265MB5894GBRP_
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

{qp(OUTLOOK_HTML)}
--_000_LO4P265MB5894A1B2C3D4E5F6LO4P265MB5894GBRP_--
""",
    pixels=1,
)

write(
    "outlook_upper_body_8bit.eml",
    """From: "Dr. Anne Müller" <a.mueller@praxis-mueller.de>
To: <termine@klinik-nord.de>
Subject: =?iso-8859-1?Q?Terminbest=E4tigung_f=FCr_Donnerstag?=
Date: Wed, 3 Sep 2025 16:40:02 +0200
Message-ID: <000001dc1e2f$5a3b2c10$0eb18430$@praxis-mueller.de>
MIME-Version: 1.0
Content-Type: multipart/alternative;
	boundary="----=_NextPart_000_0001_01DC1E40.1DC4A510"
X-Mailer: Microsoft Outlook 16.0
Thread-Index: AdweL1m4nVw0oNq5R2K8TqRjXkYzHg==
Content-Language: de

Dies ist eine mehrteilige Nachricht im MIME-Format.

------=_NextPart_000_0001_01DC1E40.1DC4A510
Content-Type: text/plain;
	charset="iso-8859-1"
Content-Transfer-Encoding: 8bit

Sehr geehrte Damen und Herren,

hiermit bestätige ich den Termin am Donnerstag um 14:00 Uhr.

Mit freundlichen Grüßen
Anne Müller

------=_NextPart_000_0001_01DC1E40.1DC4A510
Content-Type: text/html;
	charset="iso-8859-1"
Content-Transfer-Encoding: 8bit

<HTML><HEAD>
<META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=iso-8859-1">
</HEAD>
<BODY LANG="DE">
<P>Sehr geehrte Damen und Herren,</P>
<P>hiermit bestätige ich den Termin am Donnerstag um 14:00 Uhr.</P>
<P>Mit freundlichen Grüßen<BR>Anne Müller</P>
</BODY></HTML>

------=_NextPart_000_0001_01DC1E40.1DC4A510--
""",
    pixels=1,
    encoding="iso-8859-1",
)

write(
    "outlook_windows1252_qp.eml",
    f"""From: Carlos Pereira <cpereira@pereira-advogados.pt>
To: "Lúcia Santos" <lucia.santos@imobiliaria-sol.pt>
Subject: Contrato – versão final
Date: Mon, 20 Oct 2025 11:05:19 +0100
Message-ID: <AM9PR02MB7299F1E2D3C4B5A6@AM9PR02MB7299.eurprd02.prod.outlook.com>
Content-Type: multipart/alternative;
	boundary="_000_AM9PR02MB7299F1E2D3C4B5A6AM9PR02MB7299eurp_"
MIME-Version: 1.0

--_000_AM9PR02MB7299F1E2D3C4B5A6AM9PR02MB7299eurp_
Content-Type: text/plain; charset="Windows-1252"
Content-Transfer-Encoding: quoted-printable

{_PART2}
--_000_AM9PR02MB7299F1E2D3C4B5A6AM9PR02MB7299eurp_
Content-Type: text/html; charset="Windows-1252"
Content-Transfer-Encoding: quoted-printable

{qp('<html><head><meta http-equiv="Content-Type" content="text/html; charset=Windows-1252"></head><body dir="ltr"><div style="font-family:Calibri,Arial,Helvetica,sans-serif;font-size:12pt">Cara Lúcia,<br><br>Segue em anexo a versão final do contrato – com as alterações “acordadas”.<br><br>Cumprimentos,<br>Carlos</div></body></html>', "windows-1252")}
--_000_AM9PR02MB7299F1E2D3C4B5A6AM9PR02MB7299eurp_--
""",
    pixels=1,
)

APPLE_HTML = """<html aria-label="message body"><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body style="overflow-wrap: break-word; -webkit-nbsp-mode: space; line-break: after-white-space;">Hi Sam,<div><br></div><div>Here are the photos from Saturday 📸 — the one by the lake is my favourite.</div><div><br></div><div><img apple-inline="yes" id="2F1C5B0E-7A8D-4E0B-9C3A-1D2E3F4A5B6C" src="cid:0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9" alt="IMG_4821.jpeg"></div><div><br></div><div>Lena</div></body></html>"""
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

write(
    "apple_mail_related_cid.eml",
    f"""From: Lena Vogt <lena.vogt@icloud.com>
Content-Type: multipart/alternative;
	boundary="Apple-Mail=_8D7C6B5A-4E3F-4D2C-9B1A-0F9E8D7C6B5A"
Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))
Subject: Photos from Saturday
Message-Id: <5E4D3C2B-1A09-4F8E-B7D6-C5B4A3928170@icloud.com>
Date: Sun, 12 Oct 2025 20:31:07 +0200
To: Sam Okafor <sam.okafor@gmail.com>
X-Mailer: Apple Mail (2.3774.600.62)


--Apple-Mail=_8D7C6B5A-4E3F-4D2C-9B1A-0F9E8D7C6B5A
Content-Transfer-Encoding: quoted-printable
Content-Type: text/plain;
	charset=utf-8

{_PART3}
--Apple-Mail=_8D7C6B5A-4E3F-4D2C-9B1A-0F9E8D7C6B5A
Content-Type: multipart/related;
	type="text/html";
	boundary="Apple-Mail=_1F2E3D4C-5B6A-4798-8A7B-6C5D4E3F2A1B"


--Apple-Mail=_1F2E3D4C-5B6A-4798-8A7B-6C5D4E3F2A1B
Content-Transfer-Encoding: quoted-printable
Content-Type: text/html;
	charset=utf-8

{qp(APPLE_HTML)}
--Apple-Mail=_1F2E3D4C-5B6A-4798-8A7B-6C5D4E3F2A1B
Content-Transfer-Encoding: base64
Content-Disposition: inline;
	filename=IMG_4821.jpeg
Content-Type: image/png;
	x-unix-mode=0644;
	name="IMG_4821.jpeg"
Content-Id: <0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9>

{b64(PNG)}
--Apple-Mail=_1F2E3D4C-5B6A-4798-8A7B-6C5D4E3F2A1B--

--Apple-Mail=_8D7C6B5A-4E3F-4D2C-9B1A-0F9E8D7C6B5A--
""",
    pixels=1,
)

write(
    "apple_mail_mixed_fragments.eml",
    f"""From: Lena Vogt <lena.vogt@icloud.com>
Content-Type: multipart/alternative;
	boundary="Apple-Mail=_AAA11111-2222-3333-4444-555566667777"
Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))
Subject: Invoice and notes
Message-Id: <99887766-5544-3322-1100-AABBCCDDEEFF@icloud.com>
Date: Mon, 13 Oct 2025 08:02:11 +0200
To: accounts@bergmann-gmbh.de
X-Mailer: Apple Mail (2.3774.600.62)


--Apple-Mail=_AAA11111-2222-3333-4444-555566667777
Content-Transfer-Encoding: 7bit
Content-Type: text/plain;
	charset=us-ascii

Hello,

please find the invoice attached.

Notes below.
--Apple-Mail=_AAA11111-2222-3333-4444-555566667777
Content-Type: multipart/mixed;
	boundary="Apple-Mail=_BBB11111-2222-3333-4444-555566667777"


--Apple-Mail=_BBB11111-2222-3333-4444-555566667777
Content-Transfer-Encoding: 7bit
Content-Type: text/html;
	charset=us-ascii

<html><head><meta http-equiv="content-type" content="text/html; charset=us-ascii"></head><body style="overflow-wrap: break-word;">Hello,<div><br></div><div>please find the invoice attached.</div><div></div></body></html>
--Apple-Mail=_BBB11111-2222-3333-4444-555566667777
Content-Disposition: inline;
	filename=invoice-2025-114.pdf
Content-Type: application/pdf;
	x-unix-mode=0644;
	name="invoice-2025-114.pdf"
Content-Transfer-Encoding: base64

{_PART4}
--Apple-Mail=_BBB11111-2222-3333-4444-555566667777
Content-Transfer-Encoding: 7bit
Content-Type: text/html;
	charset=us-ascii

<html><head><meta http-equiv="content-type" content="text/html; charset=us-ascii"></head><body style="overflow-wrap: break-word;"><div></div><div>Notes below.</div></body></html>
--Apple-Mail=_BBB11111-2222-3333-4444-555566667777--

--Apple-Mail=_AAA11111-2222-3333-4444-555566667777--
""",
    pixels=2,
)

GMAIL_HTML = '<div dir="ltr"><div>Hi Priya,</div><div><br></div><div>Thanks for the call today. As discussed, the deadline moves to <b>Friday 24th</b>.</div><div><br></div><div>Best,</div><div>Tom</div><div><br></div><span class="gmail_signature_prefix">-- </span><br><div dir="ltr" class="gmail_signature"><div dir="ltr">Tom Hartley<br>Hartley &amp; Sons Ltd</div></div></div>\n'
write(
    "gmail_web_no_body_tag.eml",
    f"""MIME-Version: 1.0
Date: Thu, 16 Oct 2025 14:22:05 +0100
Message-ID: <CAOx7k=4dF9+G5yQ1mZ8r2V3Fq6kJp0w@mail.gmail.com>
Subject: Deadline
From: Tom Hartley <tom.hartley@gmail.com>
To: Priya Nair <priya.nair@nairdesign.in>
Content-Type: multipart/alternative; boundary="000000000000a1b2c3063f5e7d90"

--000000000000a1b2c3063f5e7d90
Content-Type: text/plain; charset="UTF-8"

Hi Priya,

Thanks for the call today. As discussed, the deadline moves to *Friday 24th*.

Best,
Tom

--
Tom Hartley
Hartley & Sons Ltd

--000000000000a1b2c3063f5e7d90
Content-Type: text/html; charset="UTF-8"

{GMAIL_HTML}
--000000000000a1b2c3063f5e7d90--
""",
    pixels=1,
)

write(
    "gmail_base64_utf8_emoji.eml",
    f"""MIME-Version: 1.0
Date: Fri, 17 Oct 2025 07:45:12 -0700
Message-ID: <CAF1r7Gm0q+abc123XYZ=def456@mail.gmail.com>
Subject: =?UTF-8?B?8J+OiSBQYXJ0eSBwbGFubmluZw==?=
From: Diego Alvarez <diego.alvarez@gmail.com>
To: team@alvarez-events.mx
Cc: "Ana (Events)" <ana@alvarez-events.mx>
Content-Type: multipart/alternative; boundary="0000000000009f8e7d063f5e8a11"

--0000000000009f8e7d063f5e8a11
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: base64

{_PART5}
--0000000000009f8e7d063f5e8a11
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: base64

{_PART6}
--0000000000009f8e7d063f5e8a11--
""",
    pixels=1,
)

write(
    "gmail_mixed_html_attachment.eml",
    f"""MIME-Version: 1.0
Date: Fri, 17 Oct 2025 10:11:40 +0100
Message-ID: <CAJ9x2Q+report=q1w2e3r4@mail.gmail.com>
Subject: Q3 report (HTML export attached)
From: Nora Lindqvist <nora.lindqvist@gmail.com>
To: board@lindqvist-ab.se
Content-Type: multipart/mixed; boundary="000000000000c0ffee063f5e9b22"

--000000000000c0ffee063f5e9b22
Content-Type: multipart/alternative; boundary="000000000000beef01063f5e9b20"

--000000000000beef01063f5e9b20
Content-Type: text/plain; charset="UTF-8"

Hej,

the Q3 report is attached as an HTML export.

Nora

--000000000000beef01063f5e9b20
Content-Type: text/html; charset="UTF-8"

<div dir="ltr">Hej,<div><br></div><div>the Q3 report is attached as an HTML export.</div><div><br></div><div>Nora</div></div>

--000000000000beef01063f5e9b20--
--000000000000c0ffee063f5e9b22
Content-Type: text/html; charset="UTF-8"; name="q3-report.html"
Content-Disposition: attachment; filename="q3-report.html"
Content-Transfer-Encoding: base64
X-Attachment-Id: f_mgx1a2b30
Content-ID: <f_mgx1a2b30>

{_PART7}
--000000000000c0ffee063f5e9b22--
""",
    pixels=1,
)

THUNDERBIRD_HTML = """<!DOCTYPE html>
<html>
  <head>

    <meta http-equiv="content-type" content="text/html; charset=UTF-8">
  </head>
  <body>
    <p>Hello Jiří,</p>
    <p>attached are the minutes of yesterday's meeting. <!-- TODO: link to the wiki page before </body> -->The
      next one is on <b>4 November</b>.</p>
    <pre class="moz-signature" cols="72">-- 
Pavel Novák
Spolek přátel železnic</pre>
  </body>
</html>
"""
write(
    "thunderbird_comment_body.eml",
    f"""Content-Type: multipart/alternative;
 boundary="------------mF0sP8QY2TlA3bXkVj9wRz4c"
Message-ID: <4c1e2f3a-5b6d-4e7f-8a9b-0c1d2e3f4a5b@spolek-zeleznic.cz>
Date: Tue, 21 Oct 2025 18:03:55 +0200
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: cs
To: =?UTF-8?B?SmnFmcOtIERvbGXFvmFs?= <jiri.dolezal@seznam.cz>
From: =?UTF-8?Q?Pavel_Nov=C3=A1k?= <pavel.novak@spolek-zeleznic.cz>
Subject: =?UTF-8?Q?Z=C3=A1pis_ze_sch=C5=AFze?=

This is a multi-part message in MIME format.
--------------mF0sP8QY2TlA3bXkVj9wRz4c
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

Hello Jiří,

attached are the minutes of yesterday's meeting. The next one is on *4 
November*.

-- 
Pavel Novák
Spolek přátel železnic

--------------mF0sP8QY2TlA3bXkVj9wRz4c
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: 8bit

{THUNDERBIRD_HTML}
--------------mF0sP8QY2TlA3bXkVj9wRz4c--
""",
    pixels=1,
)

write(
    "thunderbird_html_only_lf_trailing.eml",
    """Message-ID: <e1d2c3b4-a596-4877-8665-544332211000@example.net>
Date: Wed, 22 Oct 2025 09:14:20 +0200
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
From: Ingrid Solberg <ingrid@solberg.no>
To: post@fjordhytter.no
Subject: Booking week 7
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: 7bit

<html>
  <head>
    <meta http-equiv="content-type" content="text/html; charset=UTF-8">
  </head>
  <body>
    <p>Hello,</p>
    <p>we would like to book the cabin for week 7 (4 adults, 1 dog).</p>
    <p>Regards,<br>
      Ingrid</p>
  </body>
</html>
""",
    pixels=1,
)

write(
    "script_style_body.eml",
    """From: Web Team <web@shop-nordlicht.de>
To: kunde@example.de
Subject: Your order 48213 has shipped
Date: Thu, 23 Oct 2025 12:00:00 +0000
Message-ID: <order-48213-shipped@shop-nordlicht.de>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8bit

<!DOCTYPE html>
<html><head>
<style type="text/css">
  /* the layout breaks if </body> ever appears here */
  body { font-family: Arial; }
</style>
<script type="application/ld+json">{"@context":"http://schema.org","@type":"ParcelDelivery","note":"</body> in JSON"}</script>
</head>
<body>
<p>Your order 48213 has shipped. Track it at <a href="https://shop-nordlicht.de/t/48213">shop-nordlicht.de</a>.</p>
</body>
</html>
""",
    pixels=1,
)

write(
    "two_body_closings.eml",
    """From: Forwarding Bot <noreply@old-crm.example>
To: sales@example.org
Subject: Lead from website
Date: Thu, 23 Oct 2025 13:00:00 +0000
Message-ID: <lead-7781@old-crm.example>
MIME-Version: 1.0
Content-Type: text/html; charset=us-ascii

<html><body><p>New lead: Hugo Ferreira</p></body></html>
<html><body><p>Source: contact form</p></body></html>
""",
    pixels=1,
)

write(
    "no_html_tags_at_all.eml",
    """From: alerts@monitoring.example
To: oncall@example.com
Subject: Disk usage 91% on db-2
Date: Thu, 23 Oct 2025 03:12:00 +0000
Message-ID: <alert-99812@monitoring.example>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<b>db-2</b>: disk usage is <span style="color:red">91%</span> (threshold 90%).
""",
    pixels=1,
)

write(
    "charset_only_in_meta.eml",
    """From: Kenji Watanabe <kenji@watanabe-trading.jp>
To: order@example.co.jp
Subject: Order confirmation
Date: Fri, 24 Oct 2025 10:00:00 +0900
Message-ID: <20251024100000.12345@watanabe-trading.jp>
MIME-Version: 1.0
Content-Type: text/html
Content-Transfer-Encoding: 8bit

<html><head><meta charset="utf-8"></head><body><p>ご注文ありがとうございます。</p><p>発送は来週の予定です。</p></body></html>
""",
    pixels=1,
)

SJIS_HTML = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"></head><body><p>お世話になっております。ソフトウェアの表示について確認しました。</p><p>よろしくお願いいたします。</p></body></html>\n'
write(
    "shift_jis_8bit.eml",
    b"From: =?ISO-2022-JP?B?GyRCRURDZhsoQg==?= <tanaka@example.jp>\nTo: support@example.co.jp\nSubject: =?ISO-2022-JP?B?GyRCJV0lVSVIJSYlJyUiGyhC?=\nDate: Fri, 24 Oct 2025 11:00:00 +0900\nMessage-ID: <sjis-001@example.jp>\nMIME-Version: 1.0\nContent-Type: text/html; charset=Shift_JIS\nContent-Transfer-Encoding: 8bit\n\n"
    + SJIS_HTML.encode("shift_jis"),
    pixels=1,
)

write(
    "iso2022jp_7bit.eml",
    b"From: Sato <sato@example.jp>\nTo: info@example.co.jp\nSubject: =?ISO-2022-JP?B?GyRCJDQwJkI1GyhC?=\nDate: Fri, 24 Oct 2025 12:00:00 +0900\nMessage-ID: <jis-001@example.jp>\nMIME-Version: 1.0\nContent-Type: text/html; charset=ISO-2022-JP\nContent-Transfer-Encoding: 7bit\n\n"
    + "<html><body><p>いつもお世話になっております。</p></body></html>\n".encode("iso-2022-jp"),
    pixels=1,
)

write(
    "long_lines_8bit.eml",
    """From: Newsletter <news@kulturhaus.example>
To: member@example.org
Subject: Programme for November
Date: Sat, 25 Oct 2025 08:00:00 +0000
Message-ID: <prog-nov@kulturhaus.example>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8bit

<html><body><table width="600"><tr><td>"""
    + "".join(
        f'<p style="margin:0 0 12px 0;font-family:Georgia,serif">Konzert {i}: Streichquartett – Beethoven, Schubert, Dvořák</p>'
        for i in range(7)
    )
    + """</td></tr></table></body></html>
""",
    pixels=1,
)

write(
    "mailchimp_style_qp.eml",
    f"""Return-Path: <bounce-mc.us21_1234567.890-member=example.org@mail123.atl11.rsgsv.net>
From: "Bäckerei Sonnenschein" <hallo@baeckerei-sonnenschein.de>
Reply-To: hallo@baeckerei-sonnenschein.de
To: <member@example.org>
Subject: =?utf-8?Q?Neue_Brote_im_Oktober_=F0=9F=8D=9E?=
Date: Sun, 26 Oct 2025 07:00:03 +0000
Message-ID: <3c4d5e6f7a8b9c0d1e2f.1234567890.mc@mail123.atl11.rsgsv.net>
List-Unsubscribe: <https://baeckerei-sonnenschein.us21.list-manage.com/unsubscribe?u=abc&id=def>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
X-Mailer: MailChimp Mailer - **CID1a2b3c4d5e6f7a8b9c0d**
Mime-Version: 1.0
Content-Type: multipart/alternative; boundary="_----------=_MCPart_1234567890"

This is a multi-part message in MIME format

--_----------=_MCPart_1234567890
Content-Type: text/plain; charset="utf-8"; format="fixed"
Content-Transfer-Encoding: quoted-printable

{_PART8}
--_----------=_MCPart_1234567890
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

{qp('<!doctype html><html xmlns="http://www.w3.org/1999/xhtml"><head><meta charset="UTF-8"><!--[if gte mso 15]><xml><o:OfficeDocumentSettings><o:AllowPNG/></o:OfficeDocumentSettings></xml><![endif]--><style type="text/css">p{margin:10px 0;padding:0;}table{border-collapse:collapse;}</style></head><body><center><table align="center" border="0" cellpadding="0" cellspacing="0" height="100%" width="100%" id="bodyTable"><tr><td align="center" valign="top" id="bodyCell"><h1>Neue Brote im Oktober 🍞</h1><p>Kürbisbrot, Walnussbrot und unser Roggenmischbrot.</p></td></tr></table></center><img src="https://baeckerei-sonnenschein.us21.list-manage.com/track/open.php?u=abc&id=def&e=123" height="1" width="1" alt=""></body></html>')}
--_----------=_MCPart_1234567890--
""",
    pixels=1,
)

write(
    "forwarded_rfc822_inner_html.eml",
    """From: Marek Zielinski <marek@zielinski.pl>
To: Joanna <joanna@zielinski.pl>
Subject: Fwd: Your flight booking
Date: Mon, 27 Oct 2025 09:30:00 +0100
Message-ID: <fwd-5521@zielinski.pl>
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Type: multipart/mixed; boundary="------------fwdBoundary7788"

This is a multi-part message in MIME format.
--------------fwdBoundary7788
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: 7bit

<html><body><p>See below - we fly on Friday.</p></body></html>
--------------fwdBoundary7788
Content-Type: message/rfc822; name="Your flight booking.eml"
Content-Disposition: attachment; filename="Your flight booking.eml"

From: Bookings <bookings@airline.example>
To: marek@zielinski.pl
Subject: Your flight booking
Date: Sun, 26 Oct 2025 20:00:00 +0000
Message-ID: <booking-ABC123@airline.example>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><p>Booking ABC123: WAW &rarr; LIS, 31 Oct 2025.</p></body></html>

--------------fwdBoundary7788--
""",
    pixels=1,
)

write(
    "calendar_invite.eml",
    """From: Organizer <organizer@example.com>
To: guest@example.org
Subject: Invitation: Project kickoff @ Tue 4 Nov 2025 10:00 - 11:00 (CET)
Date: Tue, 28 Oct 2025 15:00:00 +0000
Message-ID: <invite-kickoff@example.com>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="000000000000cal0001"

--000000000000cal0001
Content-Type: multipart/alternative; boundary="000000000000cal0002"

--000000000000cal0002
Content-Type: text/plain; charset="UTF-8"

Project kickoff, Tue 4 Nov 2025 10:00 - 11:00 (CET)

--000000000000cal0002
Content-Type: text/html; charset="UTF-8"

<span itemscope itemtype="http://schema.org/InformAction"><div>Project kickoff</div><div>Tue 4 Nov 2025 10:00 - 11:00 (CET)</div></span>

--000000000000cal0002
Content-Type: text/calendar; charset="UTF-8"; method=REQUEST
Content-Transfer-Encoding: 7bit

BEGIN:VCALENDAR
PRODID:-//Google Inc//Google Calendar 70.9054//EN
VERSION:2.0
METHOD:REQUEST
BEGIN:VEVENT
DTSTART:20251104T090000Z
DTEND:20251104T100000Z
UID:kickoff-2025@example.com
SUMMARY:Project kickoff
END:VEVENT
END:VCALENDAR

--000000000000cal0002--
--000000000000cal0001
Content-Type: application/ics; name="invite.ics"
Content-Disposition: attachment; filename="invite.ics"
Content-Transfer-Encoding: base64

QkVHSU46VkNBTEVOREFSClZFUlNJT046Mi4wCkVORDpWQ0FMRU5EQVIK
--000000000000cal0001--
""",
    pixels=1,
)

write(
    "plain_text_only.eml",
    """From: Olaf Berg <olaf@berg.example>
To: friend@example.net
Subject: Lunch?
Date: Tue, 28 Oct 2025 11:11:11 +0100
Message-ID: <plain-1@berg.example>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8; format=flowed
Content-Transfer-Encoding: 8bit

Lunch on Thursday? The Thai place near the station.

Olaf
""",
    untracked="text_only",
)

write(
    "plain_with_pdf.eml",
    f"""From: Olaf Berg <olaf@berg.example>
To: friend@example.net
Subject: The form
Date: Tue, 28 Oct 2025 11:20:00 +0100
Message-ID: <plain-2@berg.example>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="=-=-=plainpdf"

--=-=-=plainpdf
Content-Type: text/plain; charset=us-ascii

Here is the form.

--=-=-=plainpdf
Content-Type: application/pdf; name="form.pdf"
Content-Disposition: attachment; filename="form.pdf"
Content-Transfer-Encoding: base64

{b64(b"%PDF-1.4 form")}
--=-=-=plainpdf--
""",
    untracked="text_only",
)

write(
    "smime_signed.eml",
    f"""From: Eva Horvat <eva.horvat@notar-horvat.hr>
To: client@example.com
Subject: Signed statement
Date: Wed, 29 Oct 2025 10:00:00 +0100
Message-ID: <smime-1@notar-horvat.hr>
MIME-Version: 1.0
Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="----SIGNED-BOUNDARY-42"

This is an S/MIME signed message

------SIGNED-BOUNDARY-42
Content-Type: text/html; charset=utf-8

<html><body><p>I confirm the statement.</p></body></html>
------SIGNED-BOUNDARY-42
Content-Type: application/pkcs7-signature; name="smime.p7s"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="smime.p7s"

{b64(bytes(range(64)))}
------SIGNED-BOUNDARY-42--
""",
    untracked="signed",
)

write(
    "dkim_signed_html.eml",
    """DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=sel1;
	h=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;
	b=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgaGFzIHRoZSBzaGFwZSBvZiBvbmU=
From: Billing <billing@example.com>
To: customer@example.org
Subject: Your invoice
Date: Wed, 29 Oct 2025 12:00:00 +0000
Message-ID: <dkim-1@example.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><p>Invoice 2025-10 is ready.</p></body></html>
""",
    untracked="dkim_signed",
)

write(
    "broken_boundary.eml",
    """From: Broken Client <broken@example.com>
To: someone@example.org
Subject: Boundary never appears
Date: Wed, 29 Oct 2025 13:00:00 +0000
Message-ID: <broken-1@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="this-boundary-is-missing"

--some-other-boundary
Content-Type: text/html; charset=utf-8

<html><body><p>Hello</p></body></html>
--some-other-boundary--
""",
    untracked="unparsable",
)

write(
    "bad_base64_html.eml",
    """From: Broken Client <broken@example.com>
To: someone@example.org
Subject: Bad base64
Date: Wed, 29 Oct 2025 13:05:00 +0000
Message-ID: <broken-2@example.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

PGh0bWw+PGJvZHk+!!!this is not base64!!!PC9ib2R5PjwvaHRtbD4=
""",
    untracked="unparsable",
)

write(
    "bcc_header_left_in.eml",
    """From: Assistant <assistant@example.com>
To: partner@example.org
Bcc: boss@example.com
Subject: Meeting notes
Date: Thu, 30 Oct 2025 09:00:00 +0000
Message-ID: <bcc-1@example.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><p>Notes attached.</p></body></html>
""",
    pixels=1,
)

write(
    "opt_out_header.eml",
    """From: Assistant <assistant@example.com>
To: lawyer@example.org
Subject: Private
X-MailPing: off
Date: Thu, 30 Oct 2025 09:30:00 +0000
Message-ID: <optout-1@example.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><p>Not to be tracked.</p></body></html>
""",
    untracked="opted_out",
)

write(
    "ios_mail_html_qp.eml",
    f"""Content-Type: multipart/alternative; boundary=Apple-Mail-3F2E1D0C-BA98-4765-4321-0FEDCBA98765
Content-Transfer-Encoding: 7bit
From: Chiara Bianchi <chiara.bianchi@icloud.com>
Mime-Version: 1.0 (1.0)
Date: Fri, 31 Oct 2025 19:45:33 +0100
Subject: Re: Cena sabato
Message-Id: <A1B2C3D4-E5F6-4A5B-8C7D-9E0F1A2B3C4D@icloud.com>
In-Reply-To: <CAxyz@mail.gmail.com>
To: Marco Rossi <marco.rossi@libero.it>
X-Mailer: iPhone Mail (22H31)


--Apple-Mail-3F2E1D0C-BA98-4765-4321-0FEDCBA98765
Content-Type: text/plain;
	charset=utf-8
Content-Transfer-Encoding: quoted-printable

{_PART9}
--Apple-Mail-3F2E1D0C-BA98-4765-4321-0FEDCBA98765
Content-Type: text/html;
	charset=utf-8
Content-Transfer-Encoding: quoted-printable

{qp('<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body dir="auto">Perfetto, ci vediamo alle 20! 😊<br id="lineBreakAtBeginningOfSignature"><div dir="ltr">Inviato da iPhone</div></body></html>')}
--Apple-Mail-3F2E1D0C-BA98-4765-4321-0FEDCBA98765--
""",
    pixels=1,
)


# More encoded bodies (see above for why they live outside the f-strings).
_PART101 = b64("Hej Erik,\n\nHär är ritningarna för plan 2.\n\nMvh Sofia\n")
_PART102 = qp("Bom dia,\n\nEm anexo os documentos pedidos.\n\nRui\n")
_PART103 = b64(b"PK\x03\x04 docx " + bytes(range(255, -1, -1)) * 3)
_PART104 = qp("Guten Tag, anbei ein Foto vom Schaden.\n\nNoah")
_PART105 = b64(b"\xff\xd8\xff\xe0 JFIF " + bytes(range(256)) * 2)
_PART106 = qp(
    "Bonjour Hélène,\n\nLa réunion aura lieu jeudi à 18h, salle des fêtes.\n\nAndré\n", "iso-8859-1"
)
_PART107 = qp(
    '<!DOCTYPE html>\n<html>\n  <head>\n    <meta http-equiv="content-type" content="text/html; charset=ISO-8859-1">\n  </head>\n  <body>\n    <p>Bonjour Hélène,</p>\n    <p>La réunion aura lieu jeudi à 18h, salle des fêtes.</p>\n    <p>André</p>\n  </body>\n</html>\n',
    "iso-8859-1",
)
_PART108 = b64(
    "BEGIN:VCARD\nVERSION:4.0\nFN:André Lefèvre\nEMAIL:andre@tournesol.example.fr\nEND:VCARD\n"
)
_PART109 = qp("Neu im November: Lesungen, Workshops und die lange Nacht der Bücher.\n")

write(
    "outlook_mac_related_base64.eml",
    f"""From: Sofia Andersson <sofia@andersson-arkitekter.se>
To: Erik Lund <erik.lund@bygg-lund.se>
Subject: Ritningar plan 2
Thread-Topic: Ritningar plan 2
Thread-Index: AQHb4f5k2m3n4o5p6q7r8s9t0u1v2w==
Date: Mon, 3 Nov 2025 10:22:41 +0000
Message-ID: <8A7B6C5D-4E3F-2A1B-0C9D-8E7F6A5B4C3D@andersson-arkitekter.se>
Content-Language: sv-SE
X-MS-Has-Attach: yes
user-agent: Microsoft-MacOutlook/16.90.24101712
Content-Type: multipart/related;
	boundary="_004_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_";
	type="multipart/alternative"
MIME-Version: 1.0

--_004_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_
Content-Type: multipart/alternative;
	boundary="_000_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_"

--_000_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: base64

{_PART101}

--_000_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_
Content-Type: text/html; charset="utf-8"
Content-ID: <A1B2C3D4E5F6@SWEP280.PROD.OUTLOOK.COM>
Content-Transfer-Encoding: base64

{b64('<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head><body><div style="font-family:Aptos,sans-serif">Hej Erik,<br><br>Här är ritningarna för plan 2.<br><img width="320" height="200" id="Picture_x0020_1" src="cid:image001.png@01DC4C8A.1F2E3D40"><br><br>Mvh Sofia</div></body></html>', width=76)}

--_000_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_--

--_004_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_
Content-Type: image/png; name="image001.png"
Content-Description: image001.png
Content-Disposition: inline; filename="image001.png"; size=68
Content-ID: <image001.png@01DC4C8A.1F2E3D40>
Content-Transfer-Encoding: base64

{b64(PNG)}

--_004_8A7B6C5D4E3F2A1B0C9D8E7F6A5B4C3Dandersson_--
""",
    pixels=1,
)

write(
    "outlook_vml_background_in_body.eml",
    """From: Events Team <events@konferenz-nord.example>
To: gast@example.de
Subject: Einladung zur Jahreskonferenz
Date: Tue, 4 Nov 2025 08:00:00 +0100
Message-ID: <einladung-2026@konferenz-nord.example>
MIME-Version: 1.0
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: 8bit

<!DOCTYPE html>
<html xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office">
<head><!--[if gte mso 9]><xml><o:OfficeDocumentSettings><o:PixelsPerInch>96</o:PixelsPerInch></o:OfficeDocumentSettings></xml><![endif]--></head>
<body style="margin:0">
<table role="presentation" width="100%"><tr><td background="https://konferenz-nord.example/bg.jpg" bgcolor="#1d3557" valign="top">
<!--[if gte mso 9]>
<v:rect xmlns:v="urn:schemas-microsoft-com:vml" fill="true" stroke="false" style="width:600px;height:300px;">
<v:fill type="tile" src="https://konferenz-nord.example/bg.jpg" color="#1d3557" />
<v:textbox inset="0,0,0,0">
<![endif]-->
<div><h1 style="color:#fff">Jahreskonferenz 2026</h1><p style="color:#fff">12.–13. März, Hamburg</p></div>
<!--[if gte mso 9]>
</v:textbox>
</v:rect>
</body>
<![endif]-->
</td></tr></table>
<![if !mso]><p>Nicht-Outlook-Hinweis</p><![endif]>
</body>
</html>
""",
    pixels=1,
)

write(
    "gmail_related_inline_image.eml",
    f"""MIME-Version: 1.0
Date: Wed, 5 Nov 2025 16:12:09 +0000
Message-ID: <CAK7Lx3=Yq9r+inline=Zp0@mail.gmail.com>
Subject: The new logo
From: Femi Adeyemi <femi.adeyemi@gmail.com>
To: design@adeyemi-studio.ng
Content-Type: multipart/related; boundary="000000000000aa11bb22063f9a0001"

--000000000000aa11bb22063f9a0001
Content-Type: multipart/alternative; boundary="000000000000aa11bb22063f9a0000"

--000000000000aa11bb22063f9a0000
Content-Type: text/plain; charset="UTF-8"

Here it is:
[image: logo.png]

--000000000000aa11bb22063f9a0000
Content-Type: text/html; charset="UTF-8"

<div dir="ltr">Here it is:<div><img src="cid:ii_mh3k2j1a0" alt="logo.png" width="240" height="80"><br></div></div>

--000000000000aa11bb22063f9a0000--
--000000000000aa11bb22063f9a0001
Content-Type: image/png; name="logo.png"
Content-Disposition: inline; filename="logo.png"
Content-Transfer-Encoding: base64
X-Attachment-Id: ii_mh3k2j1a0
Content-ID: <ii_mh3k2j1a0>

{b64(PNG)}
--000000000000aa11bb22063f9a0001--
""",
    pixels=1,
)

write(
    "gmail_several_attachments.eml",
    f"""MIME-Version: 1.0
Date: Wed, 5 Nov 2025 17:40:00 +0000
Message-ID: <CAB9pQ=attachments+4x@mail.gmail.com>
Subject: Documents for the notary
From: Rui Costa <rui.costa@gmail.com>
To: notario@cartorio.example.pt
Content-Type: multipart/mixed; boundary="000000000000mix00001"

--000000000000mix00001
Content-Type: multipart/alternative; boundary="000000000000alt00001"

--000000000000alt00001
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

{_PART102}
--000000000000alt00001
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

{qp('<div dir="ltr">Bom dia,<div><br></div><div>Em anexo os documentos pedidos.</div><div><br></div><div>Rui</div></div>')}
--000000000000alt00001--
--000000000000mix00001
Content-Type: application/pdf; name="certidao.pdf"
Content-Disposition: attachment; filename="certidao.pdf"
Content-Transfer-Encoding: base64
X-Attachment-Id: f_a1

{b64(b"%PDF-1.7 certidao " + bytes(range(256)) * 4)}
--000000000000mix00001
Content-Type: application/vnd.openxmlformats-officedocument.wordprocessingml.document; 
	name="procuracao.docx"
Content-Disposition: attachment; filename="procuracao.docx"
Content-Transfer-Encoding: base64
X-Attachment-Id: f_a2

{_PART103}
--000000000000mix00001--
""",
    pixels=1,
)

write(
    "ios_mail_photo_fragments.eml",
    f"""Content-Type: multipart/alternative; boundary=Apple-Mail-55AA55AA-1111-2222-3333-444455556666
Content-Transfer-Encoding: 7bit
From: Noah Fischer <noah.fischer@icloud.com>
Mime-Version: 1.0 (1.0)
Date: Thu, 6 Nov 2025 12:01:44 +0100
Subject: Schaden am Auto
Message-Id: <0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0@icloud.com>
To: schaden@versicherung.example
X-Mailer: iPhone Mail (22H31)


--Apple-Mail-55AA55AA-1111-2222-3333-444455556666
Content-Type: text/plain;
	charset=utf-8
Content-Transfer-Encoding: quoted-printable

{_PART104}
--Apple-Mail-55AA55AA-1111-2222-3333-444455556666
Content-Type: multipart/mixed;
	boundary=Apple-Mail-66BB66BB-1111-2222-3333-444455556666
Content-Transfer-Encoding: 7bit


--Apple-Mail-66BB66BB-1111-2222-3333-444455556666
Content-Type: text/html;
	charset=utf-8
Content-Transfer-Encoding: 7bit

<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body dir="auto">Guten Tag, anbei ein Foto vom Schaden.<div><br></div></body></html>
--Apple-Mail-66BB66BB-1111-2222-3333-444455556666
Content-Type: image/jpeg;
	name=IMG_0042.jpeg;
	x-apple-part-url=5C2E1B7A-9D8E-4F3A-B2C1-D0E9F8A7B6C5-L0-001
Content-Disposition: inline;
	filename=IMG_0042.jpeg
Content-Transfer-Encoding: base64

{_PART105}
--Apple-Mail-66BB66BB-1111-2222-3333-444455556666
Content-Type: text/html;
	charset=utf-8
Content-Transfer-Encoding: quoted-printable

{qp('<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"></head><body dir="auto"><div></div><div>Noah</div></body></html>')}
--Apple-Mail-66BB66BB-1111-2222-3333-444455556666--

--Apple-Mail-55AA55AA-1111-2222-3333-444455556666--
""",
    pixels=2,
)

write(
    "thunderbird_latin1_qp_vcard.eml",
    f"""Content-Type: multipart/mixed; boundary="------------B7k3Vq8Lm2Np4Rs6Tu9Wx0Yz"
Message-ID: <7d6c5b4a-3928-4716-a5f4-e3d2c1b0a998@tournesol.example.fr>
Date: Fri, 7 Nov 2025 09:09:09 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: fr
To: =?ISO-8859-1?Q?H=E9l=E8ne_Dupr=E9?= <helene.dupre@example.fr>
From: =?ISO-8859-1?Q?Andr=E9_Lef=E8vre?= <andre@tournesol.example.fr>
Subject: =?ISO-8859-1?Q?R=E9union_de_l=27association?=

This is a multi-part message in MIME format.
--------------B7k3Vq8Lm2Np4Rs6Tu9Wx0Yz
Content-Type: multipart/alternative; boundary="------------Alt9Lm2Np4Rs6Tu9Wx0YzB7k3"

--------------Alt9Lm2Np4Rs6Tu9Wx0YzB7k3
Content-Type: text/plain; charset=ISO-8859-1; format=flowed
Content-Transfer-Encoding: quoted-printable

{_PART106}
--------------Alt9Lm2Np4Rs6Tu9Wx0YzB7k3
Content-Type: text/html; charset=ISO-8859-1
Content-Transfer-Encoding: quoted-printable

{_PART107}
--------------Alt9Lm2Np4Rs6Tu9Wx0YzB7k3--
--------------B7k3Vq8Lm2Np4Rs6Tu9Wx0Yz
Content-Type: text/vcard; charset=UTF-8; name="andre.vcf"
Content-Disposition: attachment; filename="andre.vcf"
Content-Transfer-Encoding: base64

{_PART108}
--------------B7k3Vq8Lm2Np4Rs6Tu9Wx0Yz--
""",
    pixels=1,
)

write(
    "esp_transactional_koi8r.eml",
    """Return-Path: <bounces+1234567-abcd-client=example.ru@em1234.magazin.example>
From: =?koi8-r?B?7cHHwdrJzg==?= <noreply@magazin.example>
To: client@example.ru
Subject: =?koi8-r?B?98HbIMbBy9TV0sEg?=
Date: Sat, 8 Nov 2025 06:30:00 +0000
Message-ID: <sg-7f6e5d4c3b2a@magazin.example>
List-Unsubscribe: <mailto:unsubscribe@magazin.example?subject=client>
X-SG-EID: u001.AbCdEfGhIjKlMnOpQrStUvWxYz
MIME-Version: 1.0
Content-Type: text/html; charset=koi8-r
Content-Transfer-Encoding: 8bit

<html><head><meta http-equiv="Content-Type" content="text/html; charset=koi8-r"></head><body><p>Здравствуйте!</p><p>Ваш заказ N 4821 оплачен. Спасибо за покупку.</p><img src="https://u1234.ct.magazin.example/wf/open?upn=abc" width="1" height="1" border="0" alt=""></body></html>
""",
    pixels=1,
    encoding="koi8-r",
)

write(
    "raw_text_elements.eml",
    """From: Forms <forms@example.com>
To: reviewer@example.org
Subject: Submitted form (HTML copy)
Date: Sat, 8 Nov 2025 10:00:00 +0000
Message-ID: <form-99@example.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><head><title>Form </body> copy</title></head><body>
<p>Answer:</p><textarea readonly>The user typed </body> and </BODY> here.</textarea>
<xmp>literal </body></xmp>
</body></html>
""",
    pixels=1,
)

write(
    "very_long_line_over_998.eml",
    """From: Generator <reports@legacy-erp.example>
To: controller@example.com
Subject: Daily ledger export
Date: Sun, 9 Nov 2025 02:00:00 +0000
Message-ID: <ledger-20251109@legacy-erp.example>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8bit

<html><body><table>"""
    + "".join(
        f"<tr><td>{i}</td><td>Buchung {i} – Kostenstelle {i % 17}</td></tr>" for i in range(40)
    )
    + """</table></body></html>
""",
    pixels=1,
)

write(
    "pgp_mime_encrypted.eml",
    """From: Mira Kovac <mira@kovac.example>
To: editor@newsroom.example
Subject: ...
Date: Sun, 9 Nov 2025 21:00:00 +0100
Message-ID: <pgp-enc-1@kovac.example>
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Type: multipart/encrypted;
 protocol="application/pgp-encrypted";
 boundary="------------enc0123456789"

This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)
--------------enc0123456789
Content-Type: application/pgp-encrypted
Content-Description: PGP/MIME version identification

Version: 1

--------------enc0123456789
Content-Type: application/octet-stream; name="encrypted.asc"
Content-Description: OpenPGP encrypted message
Content-Disposition: inline; filename="encrypted.asc"

-----BEGIN PGP MESSAGE-----

hF4DAAAAAAAAAAASAQdAexampleexampleexampleexampleexampleexampleexa
=abcd
-----END PGP MESSAGE-----

--------------enc0123456789--
""",
    untracked="signed",
)

write(
    "smime_opaque_pkcs7.eml",
    f"""From: Legal <legal@kanzlei.example>
To: client@example.com
Subject: Encrypted contract
Date: Mon, 10 Nov 2025 09:00:00 +0100
Message-ID: <smime-enc-2@kanzlei.example>
MIME-Version: 1.0
Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="smime.p7m"

{b64(bytes(range(200)))}
""",
    untracked="signed",
)

write(
    "arc_sealed_forward.eml",
    """ARC-Seal: i=1; a=rsa-sha256; t=1762765200; cv=none; d=lists.example.org; s=arc-2025;
	b=Zm9yIHRlc3RpbmcgdGhlIHJlbGF5IG9ubHk7IG5vdCBhIHJlYWwgc2lnbmF0dXJl
ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=lists.example.org; s=arc-2025;
	h=from:to:subject:date; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;
	b=c2VlIGFib3ZlOyB0aGlzIGlzIGEgZml4dHVyZQ==
ARC-Authentication-Results: i=1; lists.example.org; dkim=pass header.d=example.com
From: List Member <member@example.com>
To: discuss@lists.example.org
Subject: [discuss] Meeting notes
Date: Mon, 10 Nov 2025 10:00:00 +0000
Message-ID: <arc-1@example.com>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8

<html><body><p>Notes from today.</p></body></html>
""",
    untracked="dkim_signed",
)

write(
    "outlook_calendar_reply_only.eml",
    """From: "Wong, Mei" <mei.wong@example.hk>
To: "Organizer" <organizer@example.com>
Subject: Accepted: Project kickoff
Date: Mon, 10 Nov 2025 11:00:00 +0800
Message-ID: <HK0PR01MB5555@HK0PR01MB5555.apcprd01.prod.outlook.com>
MIME-Version: 1.0
Content-Type: text/calendar; charset="utf-8"; method=REPLY
Content-Transfer-Encoding: 7bit

BEGIN:VCALENDAR
METHOD:REPLY
PRODID:Microsoft Exchange Server 2010
VERSION:2.0
BEGIN:VEVENT
ATTENDEE;PARTSTAT=ACCEPTED:mailto:mei.wong@example.hk
UID:kickoff-2025@example.com
SUMMARY:Accepted: Project kickoff
END:VEVENT
END:VCALENDAR
""",
    untracked="text_only",
)

write(
    "utf16_html_part.eml",
    b"From: Legacy <legacy@example.com>\nTo: someone@example.org\nSubject: UTF-16 export\nDate: Tue, 11 Nov 2025 08:00:00 +0000\nMessage-ID: <utf16-1@example.com>\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-16\nContent-Transfer-Encoding: base64\n\n"
    + b64(
        "<html><body><p>Exportiert aus dem Altsystem – Grüße</p></body></html>", "utf-16"
    ).encode()
    + b"\n",
    pixels=1,
)

write(
    "newsletter_table_layout_no_html_tag.eml",
    f"""From: "Stadtbibliothek" <newsletter@bibliothek.example>
To: leser@example.at
Subject: Neu im November
Date: Tue, 11 Nov 2025 07:00:00 +0100
Message-ID: <nl-2025-11@bibliothek.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="nl-boundary-2025-11"

--nl-boundary-2025-11
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{_PART109}
--nl-boundary-2025-11
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{qp('<table width="100%" cellpadding="0" cellspacing="0"><tr><td align="center"><table width="600"><tr><td><h2>Neu im November</h2><p>Lesungen, Workshops und die lange Nacht der Bücher.</p></td></tr></table></td></tr></table>')}
--nl-boundary-2025-11--
""",
    pixels=1,
)

# --- issue 12: MIME rules -------------------------------------------------------------------

NOTES_HTML = qp(
    '<html><body><font size=2 face="sans-serif">Dear Mr. Ito,</font><br><br>'
    '<font size=2 face="sans-serif">the signed order confirmation for PO 4711-88 is attached. '
    "Delivery is scheduled for calendar week 48.</font><br><br>"
    '<font size=2 face="sans-serif">Mit freundlichen Grüßen / Best regards<br>'
    "Ulrike Brandt<br>Einkauf / Purchasing</font></body></html>"
)
write(
    "lotus_notes_inline_html_filename.eml",
    f"""MIME-Version: 1.0
Subject: Order confirmation PO 4711-88
To: Kenji Ito <k.ito@ito-seimitsu.example.jp>
From: Ulrike Brandt <ulrike.brandt@brandt-maschinenbau.example>
Date: Tue, 18 Nov 2025 10:02:11 +0100
Message-ID: <OF3C1A2B4D.9E8F7A6B-ONC1258C6B.0012A3B4-C1258C6B.0012C5D6@brandt-maschinenbau.example>
X-Mailer: HCL Notes Release 12.0.2 November 03, 2022
X-MIMETrack: Serialize by Notes Client on Ulrike Brandt/BRANDT(Release 12.0.2|November 03, 2022) at
 18.11.2025 10:02:11,
	Serialize complete at 18.11.2025 10:02:11
Content-Type: multipart/alternative; boundary="=_alternative 0012C5D5C1258C6B_="

This is a multipart message in MIME format.
--=_alternative 0012C5D5C1258C6B_=
Content-Type: text/plain; charset="ISO-8859-1"
Content-Disposition: inline; filename="Body.txt"
Content-Transfer-Encoding: quoted-printable

Dear Mr. Ito,

the signed order confirmation for PO 4711-88 is attached. Delivery is sched=
uled for calendar week 48.

--=_alternative 0012C5D5C1258C6B_=
Content-Type: text/html; charset="UTF-8"; name="Body.htm"
Content-Disposition: inline; filename="Body.htm"
Content-Transfer-Encoding: quoted-printable

{NOTES_HTML}
--=_alternative 0012C5D5C1258C6B_=--
""",
    pixels=1,
)

_LEDGER_ROWS = "".join(
    f"<tr><td>{i:04d}</td><td>Invoice {i}</td><td align=right>{i * 13.5:.2f} EUR</td></tr>"
    for i in range(60)
)
write(
    "erp_html_7bit_lines_over_998.eml",
    f"""From: ERP Reports <no-reply@erp.example>
To: controlling@example.com
Subject: Open items report
Date: Wed, 19 Nov 2025 05:00:00 +0000
Message-ID: <report-open-items-20251119@erp.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="=_erp_report_20251119"

--=_erp_report_20251119
Content-Type: text/plain; charset=us-ascii

{"Open items: " + "; ".join(f"{i:04d} Invoice {i}" for i in range(90))}

--=_erp_report_20251119
Content-Type: text/html; charset=us-ascii

<html><head><title>Open items</title></head><body><table border=1>{_LEDGER_ROWS}</table></body></html>

--=_erp_report_20251119--
""",
    pixels=1,
)

write(
    "outlook_ios_empty_html_part.eml",
    """From: Jonas Berg <jonas.berg@outlook.example>
To: Karin Holm <karin.holm@example.se>
Subject: Re: Keys
Thread-Topic: Keys
Date: Thu, 20 Nov 2025 18:44:02 +0000
Message-ID: <DB9PR07MB1234EMPTY@DB9PR07MB1234.eurprd07.prod.outlook.com>
Content-Language: sv-SE
MIME-Version: 1.0
Content-Type: multipart/alternative;
	boundary="_000_DB9PR07MB1234EMPTY_"

--_000_DB9PR07MB1234EMPTY_
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable


--_000_DB9PR07MB1234EMPTY_
Content-Type: text/html; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable


--_000_DB9PR07MB1234EMPTY_--
""",
    pixels=1,
)

write(
    "thunderbird_cut_short_no_closing_boundary.eml",
    """Content-Type: multipart/alternative;
 boundary="------------Zk3mN8pQ2rS5tV7wX9yA1bC4"
Message-ID: <c0ffee42-1d2e-4f3a-9b8c-7d6e5f4a3b2c@posteo.example>
Date: Fri, 21 Nov 2025 16:20:45 +0100
MIME-Version: 1.0
User-Agent: Mozilla Thunderbird
Content-Language: de-DE
To: vorstand@verein.example
From: Petra Lang <petra.lang@posteo.example>
Subject: Protokoll der Sitzung

This is a multi-part message in MIME format.
--------------Zk3mN8pQ2rS5tV7wX9yA1bC4
Content-Type: text/plain; charset=UTF-8; format=flowed
Content-Transfer-Encoding: 8bit

Hallo zusammen,

anbei das Protokoll.

--------------Zk3mN8pQ2rS5tV7wX9yA1bC4
Content-Type: text/html; charset=UTF-8
Content-Transfer-Encoding: 8bit

<!DOCTYPE html>
<html>
  <body>
    <p>Hallo zusammen,</p>
    <p>anbei das Protokoll.</p>
  </body>
</html>
""",
    untracked="unparsable",
)

write(
    "apple_mail_inner_multipart_unclosed.eml",
    """From: Lena Vogt <lena.vogt@icloud.com>
Content-Type: multipart/mixed;
	boundary="Apple-Mail=_CCC11111-2222-3333-4444-555566667777"
Mime-Version: 1.0 (Mac OS X Mail 16.0 \\(3774.600.62\\))
Subject: Plan
Message-Id: <11223344-5566-7788-99AA-BBCCDDEEFF00@icloud.com>
Date: Sat, 22 Nov 2025 09:15:00 +0100
To: team@bergmann-gmbh.de

--Apple-Mail=_CCC11111-2222-3333-4444-555566667777
Content-Type: multipart/alternative;
	boundary="Apple-Mail=_DDD11111-2222-3333-4444-555566667777"

--Apple-Mail=_DDD11111-2222-3333-4444-555566667777
Content-Transfer-Encoding: 7bit
Content-Type: text/plain;
	charset=us-ascii

The plan is attached.
--Apple-Mail=_DDD11111-2222-3333-4444-555566667777
Content-Transfer-Encoding: 7bit
Content-Type: text/html;
	charset=us-ascii

<html><body><div>The plan is attached.</div></body></html>
--Apple-Mail=_CCC11111-2222-3333-4444-555566667777
Content-Disposition: attachment;
	filename=plan.txt
Content-Type: text/plain;
	name="plan.txt"
Content-Transfer-Encoding: 7bit

1. Kick-off
--Apple-Mail=_CCC11111-2222-3333-4444-555566667777--
""",
    untracked="unparsable",
)

# A forward of a reply: both earlier copies went through this MailPing (pixel URLs under
# http://127.0.0.1:8025/p/, the rewriter tests' public_url), one tag as the relay wrote it, one
# wrapped between its attributes; a third-party tracking image stays.
_EARLIER_A = (
    '<img src="http://127.0.0.1:8025/p/QkJCQkJCQkJCQkJCQkJCQk.gif" width="1" height="1" alt="" '
    'border="0" style="border:0;width:1px;height:1px;max-width:1px;max-height:1px">'
)
_EARLIER_B = (
    '<img\nsrc="http://127.0.0.1:8025/p/Q0NDQ0NDQ0NDQ0NDQ0NDQ0.gif"\nwidth="1" height="1" alt="" '
    'border="0"\nstyle="border:0;width:1px;height:1px;max-width:1px;max-height:1px">'
)
_FORWARD_HTML = qp(
    '<div dir="ltr">Hi Marc, see Ines\'s answer below.<br><br><div class="gmail_quote">'
    '<div dir="ltr" class="gmail_attr">---------- Forwarded message ---------<br>From: Ines Roth '
    "&lt;ines@example.de&gt;<br>Subject: Re: Offer 2211<br></div><br><blockquote "
    'class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px solid rgb(204,204,204);'
    'padding-left:1ex"><div dir="ltr">Thanks, the offer is fine.</div><br><div class="gmail_quote">'
    '<blockquote class="gmail_quote"><html><body><p>Dear Ines, the offer is attached.</p>'
    f"{_EARLIER_A}</body></html>{_EARLIER_B}</blockquote></div>"
    '<img src="https://mailtrack.example/open/xyz.gif" width="0" height="0"></blockquote></div>'
    "</div>\n"
)
write(
    "gmail_forward_with_earlier_pixels.eml",
    f"""MIME-Version: 1.0
Date: Mon, 24 Nov 2025 10:02:11 +0100
Message-ID: <CAFwd0001earlierpixels@mail.gmail.example>
Subject: Fwd: Re: Offer 2211
From: Paul Keller <paul.keller@example.com>
To: Marc Weber <marc@example.org>
Content-Type: multipart/alternative; boundary="000000000000fwd2211"

--000000000000fwd2211
Content-Type: text/plain; charset="UTF-8"

Hi Marc, see Ines's answer below.

---------- Forwarded message ---------
From: Ines Roth <ines@example.de>
Subject: Re: Offer 2211

> Thanks, the offer is fine.

--000000000000fwd2211
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

{_FORWARD_HTML}
--000000000000fwd2211--
""",
    pixels=1,
)

# A price list of about 240 KB of HTML: Gmail clips after ~102 KB, so the pixel must come first.
_PRICE_ROWS = "\n".join(
    f'<tr><td style="padding:2px 6px">{i:05d}</td><td>Schraube M{3 + i % 9} x {10 + i % 50} '
    f"verzinkt</td><td align=right>{(i % 977) * 0.37:.2f} EUR</td></tr>"
    for i in range(2600)
)
_PRICE_HTML = qp(
    '<!DOCTYPE html>\n<html lang="de"><head><meta charset="utf-8"><title>Preisliste</title>'
    "<style>table{border-collapse:collapse}td{font:12px Arial}</style></head>\n"
    f'<body style="margin:0"><h1>Preisliste 2026</h1><table>\n{_PRICE_ROWS}\n</table>'
    "<p>Alle Preise zzgl. MwSt.</p></body></html>\n"
)
write(
    "long_price_list_qp.eml",
    f"""From: Vertrieb <vertrieb@example.de>
To: einkauf@example.com
Subject: Preisliste 2026
Date: Tue, 25 Nov 2025 07:30:00 +0100
Message-ID: <preisliste-2026@example.de>
MIME-Version: 1.0
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

{_PRICE_HTML}
""",
    pixels=1,
)

(HERE / "expectations.json").write_text(json.dumps(EXPECT, indent=1, sort_keys=True) + "\n")
print(f"wrote {len(EXPECT)} messages")
